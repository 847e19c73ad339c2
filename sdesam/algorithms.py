"""The SAM-family update rules, defined once.

Every rule has the form ``x' = x - eta * G(x; rho, batch)`` with

    G = (1/J) * sum_j grad f_{P_j}(x + rho * a_j / [|a_j|])

where ``P_1..P_J`` are the *parts* of the mini-batch the descent gradient is averaged over
(the whole batch, or its ``J = B/m`` disjoint micro-batches for the m-rules), ``a_j`` is the
ascent direction of part j (none, the full gradient, the part's own gradient, or the
Gibbs-reweighted gradient of RW-SAM) and the bracketed normalisation is applied by the SAM
variants only.

This module holds that table (:data:`RULES`) and :func:`direction`, a plain reference
implementation written against two callables (``grad`` and ``norm``) so that the very same
code runs on sympy matrices (``sdesam.symbolic``), on torch tensors batched over chains
(``sdesam.ensemble``) and in the tests of ``sdesam.optim``. Validation of the arguments every
layer shares (algorithm name, batch/micro sizes, rho, sampling scheme) lives here too, so the
error messages are the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

Ascent = Literal["none", "full", "part", "reweighted"]

SAMPLING_SCHEMES: tuple[str, ...] = ("with-replacement", "without-replacement")


@dataclass(frozen=True)
class Rule:
    """How one algorithm builds its update direction G.

    ``ascent``: where the perturbation direction comes from -- ``"none"`` (SGD),
    ``"full"`` (the full-data gradient: n-SAM / n-USAM), ``"part"`` (the gradient of the same
    batch or micro-batch the descent gradient is taken on) or ``"reweighted"`` (RW-SAM: the
    Gibbs-weighted average of the per-sample gradients of the batch).
    ``normalized``: divide the ascent direction by its norm (SAM) or not (USAM).
    ``micro``: the descent gradient is averaged over micro-batches of size m, each with its
    own perturbation (m-SAM / m-USAM).
    """

    name: str
    ascent: Ascent
    normalized: bool
    micro: bool
    description: str


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("sgd", "none", False, False, "mini-batch SGD: G = grad f_B(x)"),
        Rule("n-usam", "full", False, False, "G = grad f_B(x + rho grad f(x))"),
        Rule("usam", "part", False, False, "G = grad f_B(x + rho grad f_B(x))"),
        Rule("m-usam", "part", False, True,
             "G = mean_j grad f_Ij(x + rho grad f_Ij(x)), I_j micro-batches of size m"),
        Rule("n-sam", "full", True, False, "G = grad f_B(x + rho grad f / |grad f|)"),
        Rule("sam", "part", True, False, "G = grad f_B(x + rho grad f_B / |grad f_B|)"),
        Rule("m-sam", "part", True, True,
             "G = mean_j grad f_Ij(x + rho g_j/|g_j|), g_j = grad f_Ij(x)"),
        Rule("rw-sam", "reweighted", True, False,
             "G = grad f_B(x + rho g/|g|), g = sum_i p_i grad f_i, p = softmax(lam |grad f_i|)"),
    )
}

ALGORITHMS: tuple[str, ...] = tuple(RULES)


def get_rule(algorithm: str) -> Rule:
    """Return the :class:`Rule` named ``algorithm`` or raise a ValueError listing the names."""
    if not isinstance(algorithm, str) or algorithm.lower() not in RULES:
        raise ValueError(
            f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}"
        )
    return RULES[algorithm.lower()]


def resolve(algorithm: "str | Rule") -> Rule:
    """A :class:`Rule` passes through (user-defined rules); a name is looked up in :data:`RULES`."""
    return algorithm if isinstance(algorithm, Rule) else get_rule(algorithm)


def check_sampling(sampling: str) -> str:
    """Return ``sampling`` if it names a known scheme, else raise a ValueError."""
    if sampling not in SAMPLING_SCHEMES:
        raise ValueError(
            f"sampling must be one of {', '.join(SAMPLING_SCHEMES)}; got {sampling!r}"
        )
    return sampling


def check_rho(rho: Any) -> Any:
    """Return ``rho`` if it is a non-negative number (a sympy symbol passes), else raise."""
    try:
        negative = bool(rho < 0)
    except TypeError:  # sympy symbols compare symbolically; treat them as admissible
        negative = False
    if negative:
        raise ValueError(f"rho must be >= 0; got {rho!r}")
    return rho


def check_sizes(
    algorithm: "str | Rule",
    batch: int,
    micro: int | None = None,
    n: int | None = None,
    sampling: str = "with-replacement",
) -> int:
    """Validate batch and micro-batch sizes for ``algorithm``; return the micro size to use.

    ``micro`` is accepted only by the m-rules (for the others it defaults to ``batch``) and
    must divide ``batch``. Without replacement the batch cannot exceed the ``n`` samples.
    """
    rule = resolve(algorithm)
    check_sampling(sampling)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    if n is not None and sampling == "without-replacement" and batch > n:
        raise ValueError(
            f"batch must be at most the number of samples n={n} when sampling "
            f"without replacement; got batch={batch}"
        )
    if micro is None:
        return batch
    if not rule.micro:
        raise ValueError(
            f"micro is only accepted by rules with micro-batches (m-usam, m-sam), not {rule.name!r}; "
            f"leave it out (got micro={micro!r})"
        )
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1:
        raise ValueError(f"micro must be a positive integer; got {micro!r}")
    if batch % micro:
        raise ValueError(f"micro must divide batch; got micro={micro}, batch={batch}")
    return micro


def sampling_factor(size: Any, n: Any, sampling: str) -> Any:
    """c(s): E|grad f_S - grad f|^2 = c(s) tr V for a uniform sample S of ``size`` out of ``n``.

    1/s with replacement, (n - s)/(s (n - 1)) without. Works on ints, floats and sympy
    expressions alike (integers give an exact rational through sympy when either is symbolic).
    """
    check_sampling(sampling)
    if sampling == "with-replacement":
        return 1 / _exact(size)
    return (_exact(n) - size) / (_exact(size) * (n - 1))


def _exact(value: Any) -> Any:
    """Promote a Python int to a sympy Integer so that 1/s stays an exact rational."""
    if isinstance(value, int):
        import sympy

        return sympy.Integer(value)
    return value


Grad = Callable[[Any, Any], Any]


def direction(
    algorithm: "str | Rule",
    x: Any,
    parts: Sequence[Any],
    rho: Any,
    grad: Grad,
    norm: Callable[[Any], Any],
    reweighted_grad: Grad | None = None,
) -> Any:
    """The update direction G(x) of ``algorithm``: the reference implementation.

    ``parts`` are the index sets the descent gradient is averaged over: ``[batch]`` for the
    non-m rules, the list of micro-batches for m-usam / m-sam. ``grad(x, idx)`` returns the
    mean gradient of the samples ``idx`` at ``x`` (``idx=None``: the full data), ``norm(v)``
    the Euclidean norm of a direction, and ``reweighted_grad(x, idx)`` the RW-SAM ascent
    direction (see :func:`reweighted_gradient`). Only ``+``, ``*`` and ``/`` are applied to
    vectors, so any array type works.
    """
    rule = resolve(algorithm)
    if not parts:
        raise ValueError("parts must contain at least one index set")
    if not rule.micro and len(parts) != 1:
        raise ValueError(f"{rule.name} takes the whole batch as one part; got {len(parts)} parts")
    total = None
    for part in parts:
        point = perturbed_point(rule, x, part, rho, grad, norm, reweighted_grad)
        g = grad(point, part)
        total = g if total is None else total + g
    return total / len(parts) if len(parts) > 1 else total


def perturbed_point(
    rule: Rule,
    x: Any,
    part: Any,
    rho: Any,
    grad: Grad,
    norm: Callable[[Any], Any],
    reweighted_grad: Grad | None = None,
) -> Any:
    """The point ``x + rho * a`` (``a`` normalised for SAM variants) where ``part``'s gradient is taken."""
    if rule.ascent == "none":
        return x
    if rule.ascent == "full":
        ascent = grad(x, None)
    elif rule.ascent == "part":
        ascent = grad(x, part)
    else:
        if reweighted_grad is None:
            raise ValueError("rw-sam needs reweighted_grad, the Gibbs-weighted ascent direction")
        ascent = reweighted_grad(x, part)
    if rule.normalized:
        ascent = ascent / norm(ascent)
    return x + rho * ascent


def gibbs_weights(scores: Any, lam: float, dim: int = -1) -> Any:
    """RW-SAM's weights p_i = exp(lam s_i) / sum_j exp(lam s_j): the maximiser over the simplex
    of ``sum_i p_i s_i + H(P)/lam``. ``scores`` is a torch tensor (per-sample gradient norms)."""
    import torch

    if lam < 0:
        raise ValueError(f"lam must be >= 0; got {lam!r}")
    return torch.softmax(lam * scores, dim=dim)


def reweighted_gradient(per_sample_grads: Any, lam: float) -> Any:
    """RW-SAM's ascent direction sum_i p_i grad f_i from per-sample gradients ``[..., B, d]``
    (a torch tensor), with p the Gibbs weights of the exact per-sample gradient norms."""
    weights = gibbs_weights(per_sample_grads.norm(dim=-1), lam)
    return (weights.unsqueeze(-1) * per_sample_grads).sum(dim=-2)
