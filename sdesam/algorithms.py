"""The SAM-family update rules, defined once.

Every rule has the form ``x' = x - eta * G(x; rho, batch)`` with

    G = (1/J) * sum_j grad f_{P_j}(x + rho * a_j / [|a_j|])

where ``P_1..P_J`` are the *parts* of the mini-batch the descent gradient is averaged over
(the whole batch, or its ``J = B/m`` disjoint micro-batches for the m-rules), ``a_j`` is the
ascent direction of part j (none, the full gradient, the part's own gradient, or the
Gibbs-reweighted gradient of RW-SAM) and the bracketed normalisation is applied by the SAM
variants only.

This module holds the registry (:data:`RULES` of :class:`Rule`, each saying everything a layer
needs: perturbation source, normalisation, elementwise scale, micro-batches, descent weights,
drawn perturbations, accepted keywords) and :func:`direction`, a plain reference
implementation written against callables (``grad``, ``norm``, ...) so that the very same code
runs on sympy matrices (``sdesam.symbolic``), on torch tensors batched over chains
(``sdesam.simulation.ensemble``) and in the tests of ``sdesam.optim``. A user adds a rule once
with :func:`register` and every layer knows it by name; every choice list is read from
:func:`rule_names`, and no code outside this module tests a rule's name.

Which layer runs which rule is declared by the layer, not by the rule: each layer holds a
:class:`Support` listing the rule facts it implements and answers ``supports(rule)`` (None, or
the fact it lacks); :mod:`sdesam.layers` reads them all (``layers.support("sde", rule)``,
``layers.rules_for("optimizer")``), and every choice list of a layer is derived from them. Which
keywords a rule takes is read from the rule by one function, :func:`check_keywords`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from . import validation

Ascent = Literal["none", "full", "part", "reweighted"]

ASCENTS: tuple[str, ...] = ("none", "full", "part", "reweighted")

DescentWeights = Literal["none", "all", "response"]

DESCENT_WEIGHTS: tuple[str, ...] = ("none", "all", "response")

SAMPLING_SCHEMES: tuple[str, ...] = ("with-replacement", "without-replacement")

RULE_KEYWORDS: dict[str, str] = {
    "rho": "perturbation radius (>= 0)",
    "micro": "micro-batch size m (divides the batch)",
    "lam": "inverse temperature of the Gibbs weights (>= 0)",
    "delta": "finite-difference step of the gradient-norm estimator (> 0)",
}
"""Every keyword a rule may accept, with what it means (a rule's :attr:`Rule.keywords`)."""

DEFAULT_LAM = 1.0
"""The inverse temperature of the Gibbs weights when a weighted rule runs without ``lam`` (not
from the paper; tune it)."""


@dataclass(frozen=True)
class Rule:
    """Everything a layer needs to know about one update rule ``x' = x - eta G``.

    ``ascent``: where the perturbation direction comes from -- ``"none"`` (SGD), ``"full"``
    (the full-data gradient: n-SAM / n-USAM), ``"part"`` (the gradient of the same batch or
    micro-batch the descent gradient is taken on) or ``"reweighted"`` (the Gibbs-weighted
    average of the per-sample gradients of the batch, RW-SAM).
    ``normalized``: divide the ascent direction by its norm (SAM) or not (USAM).
    ``micro``: the descent gradient is averaged over micro-batches of size m, each with its
    own perturbation (m-SAM / m-USAM).
    ``scale``: an optional elementwise preconditioner of the perturbation, ``a_k <- scale(x_k)
    a_k`` applied before normalisation (adaptive / elementwise-scaled variants); it must be
    written with arithmetic that works on sympy scalars and torch tensors alike (``x**2 + 0.1``).
    ``label``: the display name (tables, legends).
    ``descent_weights`` (Gibbs-weighted rules only): how the weights p enter the descent
    gradient -- ``"none"`` (the plain batch mean at the perturbed point, the poster's RW-SAM),
    ``"all"`` (``sum_i p_i grad f_i(x + eps)``) or ``"response"`` (``grad f_B(x) +
    sum_i p_i [grad f_i(x + eps) - grad f_i(x)]``: the weights act on the response to the
    perturbation only, so at rho = 0 the step is plain SGD).
    ``ascent_draw`` (Gibbs-weighted rules only): k > 0 builds the perturbation from the mean
    gradient of k samples of the batch drawn with replacement with probabilities p, instead of
    the weighted average ``sum_i p_i grad f_i``; 0 (the default) draws nothing.

    Which layers run it is not a fact of the rule: each layer declares the facts it implements
    (see :class:`Support`), and :mod:`sdesam.layers` answers for any rule and layer.
    """

    name: str
    ascent: Ascent
    normalized: bool
    micro: bool
    description: str
    label: str = ""
    scale: Callable[[Any], Any] | None = field(default=None, compare=False)
    descent_weights: DescentWeights = "none"
    ascent_draw: int = 0

    def __post_init__(self) -> None:
        validation.one_of("ascent", self.ascent, ASCENTS)
        validation.one_of("descent_weights", self.descent_weights, DESCENT_WEIGHTS)
        validation.int_at_least("ascent_draw", self.ascent_draw, 0)
        if self.extended and self.ascent != "reweighted":
            raise validation.InputError(
                "descent_weights and ascent_draw need the Gibbs weights of a rule with ascent "
                f"'reweighted'; got ascent {self.ascent!r}")
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise validation.InputError(f"name must be a non-empty lower-case string; got {self.name!r}")
        if self.micro and self.ascent not in ("part", "none"):
            raise validation.InputError(
                "micro: a rule with micro-batches perturbs each one along its own gradient "
                f"(ascent 'part'); got ascent {self.ascent!r}")
        if self.scale is not None and not self.perturbed:
            raise validation.InputError(
                "scale preconditions the perturbation; a rule without one (ascent 'none') "
                "takes no scale")
        if self.scale is not None and not callable(self.scale):
            raise validation.InputError(f"scale must be a function of x or None; got {self.scale!r}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def perturbed(self) -> bool:
        """Whether the gradient is taken at a perturbed point (every rule but plain SGD)."""
        return self.ascent != "none"

    @property
    def weighted(self) -> bool:
        """Whether the perturbation uses Gibbs weights of per-sample gradient norms."""
        return self.ascent == "reweighted"

    @property
    def scaled(self) -> bool:
        """Whether its perturbation has an elementwise :attr:`scale`."""
        return self.scale is not None

    @property
    def extended(self) -> bool:
        """Whether it uses weights in its descent gradient or draws its perturbation."""
        return self.descent_weights != "none" or self.ascent_draw > 0


    @property
    def keywords(self) -> tuple[str, ...]:
        """The rule keywords it accepts, drawn from :data:`RULE_KEYWORDS`."""
        words = ("rho",) if self.perturbed else ()
        words += ("micro",) if self.micro else ()
        words += ("lam", "delta") if self.weighted else ()
        return words

    @property
    def has_closed_form(self) -> bool:
        """Whether its first-order drift is a potential gradient known in closed form (the
        USAM family and SGD: ``-grad(f + rho/2 |grad f|^2 + c rho/2 tr V)``)."""
        return not self.normalized and not self.weighted and self.scale is None

    @property
    def noise_induced(self) -> bool:
        """Whether its perturbation shares the mini-/micro-batch noise of its descent gradient
        (the source of the tr V regulariser; False for n-rules that perturb along grad f)."""
        return self.ascent in ("part", "reweighted")

    @property
    def family(self) -> str:
        """``"sam"`` for normalised perturbations, ``"usam"`` for unnormalised, ``"sgd"`` else."""
        if not self.perturbed:
            return "sgd"
        return "sam" if self.normalized else "usam"


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("sgd", "none", False, False, "mini-batch SGD: G = grad f_B(x)", label="SGD"),
        Rule("n-usam", "full", False, False, "G = grad f_B(x + rho grad f(x))", label="n-USAM"),
        Rule("usam", "part", False, False, "G = grad f_B(x + rho grad f_B(x))", label="USAM"),
        Rule("m-usam", "part", False, True,
             "G = mean_j grad f_Ij(x + rho grad f_Ij(x)), I_j micro-batches of size m",
             label="m-USAM"),
        Rule("n-sam", "full", True, False, "G = grad f_B(x + rho grad f / |grad f|)", label="n-SAM"),
        Rule("sam", "part", True, False, "G = grad f_B(x + rho grad f_B / |grad f_B|)", label="SAM"),
        Rule("m-sam", "part", True, True,
             "G = mean_j grad f_Ij(x + rho g_j/|g_j|), g_j = grad f_Ij(x)", label="m-SAM"),
        Rule("rw-sam", "reweighted", True, False,
             "G = grad f_B(x + rho g/|g|), g = sum_i p_i grad f_i, p = softmax(lam |grad f_i|)",
             label="RW-SAM"),
        Rule("rw-sam-wd", "reweighted", True, False,
             "G = sum_i p_i grad f_i(x + rho g/|g|), g = sum_i p_i grad f_i (weights in the "
             "descent too)", label="RW-SAM, weighted descent", descent_weights="all"),
        Rule("rw-sam-wr", "reweighted", True, False,
             "G = grad f_B(x) + sum_i p_i [grad f_i(x + rho g/|g|) - grad f_i(x)], "
             "g = sum_i p_i grad f_i (weights on the response to the perturbation)",
             label="RW-SAM, weighted response", descent_weights="response"),
        Rule("rw-sam-draw", "reweighted", True, False,
             "G = grad f_B(x + rho g_k/|g_k|), g_k the gradient of one sample of the batch "
             "drawn with probabilities p", label="RW-SAM, drawn perturbation (k=1)",
             ascent_draw=1),
    )
}
"""The registry: every layer looks rules up here (built-in ones and those a user registers)."""

BUILTIN_RULES: tuple[str, ...] = tuple(RULES)


def register(rule: Rule, *, replace: bool = False) -> Rule:
    """Add a user-defined ``rule`` to :data:`RULES`, so every layer (derivation, ensemble, SDE,
    optimizer, command line) knows it by name; a built-in name is never replaced."""
    if not isinstance(rule, Rule):
        raise validation.InputError(f"rule must be an sdesam.algorithms.Rule; got {rule!r}")
    if rule.name in BUILTIN_RULES:
        raise validation.InputError(f"rule name {rule.name!r} is a built-in rule; choose another name")
    if rule.name in RULES and not replace and RULES[rule.name] != rule:
        raise validation.InputError(f"rule name {rule.name!r} is already registered; "
                                    "pass replace=True to redefine it")
    RULES[rule.name] = rule
    return rule


def unregister(name: str) -> None:
    """Remove a user-defined rule from :data:`RULES` (built-in rules stay)."""
    if name in BUILTIN_RULES:
        raise validation.InputError(f"rule {name!r} is built in and cannot be removed")
    RULES.pop(name, None)


@contextmanager
def registered(rule: Rule) -> Iterator[Rule]:
    """Register ``rule`` for the duration of a ``with`` block (tests, notebooks)."""
    register(rule, replace=True)
    try:
        yield rule
    finally:
        unregister(rule.name)


def rule_names(where: Callable[[Rule], bool] | None = None) -> tuple[str, ...]:
    """Names of the registered rules, in registration order, that satisfy ``where``: the one
    source of every choice list (command-line choices, table rows, optimizer names)."""
    return tuple(name for name, rule in RULES.items() if where is None or where(rule))


def __getattr__(name: str) -> Any:
    """``ALGORITHMS``: the names of all registered rules, read at access time."""
    if name == "ALGORITHMS":
        return rule_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_rule(algorithm: "str | Rule") -> Rule:
    """The :class:`Rule` an entry point was given: a Rule passes through (registered or not),
    a name is looked up in :data:`RULES`; an InputError listing the registered names otherwise.
    Entry points call it once and pass the Rule down."""
    if isinstance(algorithm, Rule):
        return algorithm
    if not isinstance(algorithm, str) or algorithm.lower() not in RULES:
        raise validation.InputError(
            f"algorithm must be one of {', '.join(rule_names())}; got {algorithm!r}"
        )
    return RULES[algorithm.lower()]


# ---------------------------------------------------------------------- what a layer implements
FACTS: tuple[str, ...] = ("ascent", "normalized", "micro", "scaled", "descent_weights",
                          "ascent_draw")
"""The rule facts a layer may or may not implement (``scaled``: the rule has a :attr:`Rule.scale`)."""

PLAIN: dict[str, Any] = {"scaled": False, "descent_weights": "none", "ascent_draw": 0}
"""The extensions of the SAM family and their plain values: a layer that does not name one in
its :class:`Support` implements only the plain value, so a rule using it is refused, never run
as another rule."""


class _Any(tuple):
    """Every value of a fact (``value in ANY`` is always true)."""

    def __contains__(self, value: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: tuple = _Any()
"""In a :class:`Support`: the layer implements every value of this fact."""


class Support:
    """One layer's declaration of the rule facts it implements: ``Support("the ensemble",
    scaled=(False, True), ascent_draw=ANY)``.

    A fact it names accepts the listed values (:data:`ANY`: all); one it does not name accepts
    every value, except the extensions of :data:`PLAIN`, which then accept only their plain
    value. :meth:`reason` says which fact of a rule it lacks; :meth:`require` refuses that
    rule in one line naming the rule and the fact.
    """

    def __init__(self, layer: str, **handles: Sequence[Any]) -> None:
        unknown = set(handles) - set(FACTS)
        if unknown:
            raise ValueError(f"Support of {layer}: unknown facts {sorted(unknown)}; facts: {FACTS}")
        self.layer = layer
        self.handles: Mapping[str, Sequence[Any]] = dict(handles)

    def allowed(self, fact: str) -> Sequence[Any]:
        """The values of ``fact`` this layer implements."""
        if fact in self.handles:
            return self.handles[fact]
        return (PLAIN[fact],) if fact in PLAIN else ANY

    def missing(self, rule: Rule) -> list[str]:
        """The facts of ``rule`` (in :data:`FACTS` order) whose value this layer lacks."""
        return [fact for fact in FACTS if getattr(rule, fact) not in self.allowed(fact)]

    def describe(self, rule: Rule, fact: str) -> str:
        """``fact=value (it implements fact ...)`` for one fact of ``rule``."""
        return (f"{fact}={getattr(rule, fact)!r} (it implements {fact} "
                f"{', '.join(map(repr, self.allowed(fact)))})")

    def reason(self, rule: Rule) -> str | None:
        """None when every fact of ``rule`` is implemented, else the first missing one
        described (:meth:`describe`)."""
        missing = self.missing(rule)
        return self.describe(rule, missing[0]) if missing else None

    def refusal(self, rule: Rule) -> str | None:
        """The one-line refusal of ``rule`` naming it and the fact this layer lacks, or None."""
        reason = self.reason(rule)
        return None if reason is None else f"{self.layer} does not implement rule {rule.name!r}: {reason}"

    def require(self, rule: Rule) -> Rule:
        """``rule`` if this layer implements it; an InputError naming the rule and the fact otherwise."""
        refusal = self.refusal(rule)
        if refusal is not None:
            raise validation.InputError(refusal)
        return rule

    def __repr__(self) -> str:
        return f"Support({self.layer!r}, {', '.join(f'{k}={v!r}' for k, v in self.handles.items())})"


# ---------------------------------------------------------------------- keywords
def check_keywords(rule: Rule, **given: Any) -> Rule:
    """The one keyword policy of every layer and the command line: refuse a rule keyword
    (``rho``, ``micro``, ``lam``, ``delta``; None means not given) that ``rule`` does not take
    (:attr:`Rule.keywords`), and a missing ``micro`` when ``micro`` is asked about and the rule
    has micro-batches. ``rho = 0`` passes for a rule without a perturbation: it is that rule's
    step, so a sweep may give every rule its rho (any other value would be ignored, and is
    refused)."""
    if not isinstance(rule, Rule):
        raise TypeError(f"check_keywords takes a resolved Rule (get_rule); got {rule!r}")
    for word, value in given.items():
        if word not in RULE_KEYWORDS:
            raise validation.InputError(f"unknown rule keyword {word!r}; accepted: "
                                        f"{', '.join(RULE_KEYWORDS)}")
        if value is None or word in rule.keywords:
            continue
        if word == "rho" and _is_zero(value):
            continue
        note = "rho = 0 or none for a rule without a perturbation; " if word == "rho" else ""
        raise validation.InputError(
            f"{word} is not accepted by {rule.name!r} ({note}it accepts: "
            f"{', '.join(rule.keywords) or 'no rule keywords'})")
    if rule.micro and "micro" in given and given["micro"] is None:
        raise validation.InputError(f"micro is required by {rule.name!r}: the micro-batch size m, "
                                    "a divisor of the batch")
    return rule


def _is_zero(value: Any) -> bool:
    """Whether ``value`` is the number 0 (a sympy 0 too)."""
    try:
        return not isinstance(value, (bool, str)) and float(value) == 0.0
    except (TypeError, ValueError):
        return False


def rule_options(rule: Rule, **values: Any) -> dict[str, Any]:
    """The rule keywords among ``values`` (rho, micro, lam, delta) that ``rule`` takes: how a
    caller holding every keyword passes a rule only its own (the others are dropped)."""
    for word in values:
        if word not in RULE_KEYWORDS:
            raise validation.InputError(f"unknown rule keyword {word!r}; accepted: "
                                        f"{', '.join(RULE_KEYWORDS)}")
    return {word: value for word, value in values.items() if word in rule.keywords}


def check_sampling(sampling: str) -> str:
    """Return ``sampling`` if it names a known scheme, else raise a ValueError."""
    return validation.one_of("sampling", sampling, SAMPLING_SCHEMES)


def check_rho(rho: Any) -> Any:
    """Return ``rho`` if it is a non-negative number (a sympy symbol passes), else raise."""
    return validation.non_negative_or_symbol("rho", rho)


def check_sizes(
    rule: Rule,
    batch: int,
    micro: int | None = None,
    n: int | None = None,
    sampling: str = "with-replacement",
) -> int:
    """Validate batch and micro-batch sizes for ``rule``; return the micro size to use.

    ``micro`` is required by the rules with micro-batches (it must divide ``batch``) and refused
    by the others (:func:`check_keywords`), for which the returned size is ``batch``. Without
    replacement the batch cannot exceed the ``n`` samples.
    """
    check_keywords(rule, micro=micro)
    check_sampling(sampling)
    validation.positive_int("batch", batch)
    if n is not None and sampling == "without-replacement" and batch > n:
        raise validation.InputError(
            f"batch must be at most the number of samples n={n} when sampling "
            f"without replacement; got batch={batch}"
        )
    if micro is None:
        return batch
    validation.positive_int("micro", micro)
    if batch % micro:
        raise validation.InputError(f"micro must divide batch; got micro={micro}, batch={batch}")
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
    weighted_grad: Grad | None = None,
    draw: Callable[[Any], Any] | None = None,
) -> Any:
    """The update direction G(x) of ``algorithm``: the reference implementation.

    ``parts`` are the index sets the descent gradient is averaged over: ``[batch]`` for the
    non-m rules, the list of micro-batches for m-usam / m-sam. ``grad(x, idx)`` returns the
    mean gradient of the samples ``idx`` at ``x`` (``idx=None``: the full data), ``norm(v)``
    the Euclidean norm of a direction, and ``reweighted_grad(x, idx)`` the RW-SAM ascent
    direction (see :func:`reweighted_gradient`). Rules with :attr:`Rule.descent_weights` also
    need ``weighted_grad(point, idx)``: ``sum_{i in idx} p_i grad f_i(point)`` with the Gibbs
    weights p of the step's point x (fixed while the gradient moves to ``point``); rules with
    :attr:`Rule.ascent_draw` need ``draw(idx)``: that many indices of ``idx`` drawn with
    replacement with probabilities p (the caller owns the randomness). Only ``+``, ``*`` and
    ``/`` are applied to vectors, so any array type works. At ``rho = 0`` (a Python or sympy
    number) nothing is perturbed and no ascent is computed.
    """
    rule = get_rule(algorithm)
    if not parts:
        raise validation.InputError("parts must contain at least one index set")
    if not rule.micro and len(parts) != 1:
        raise validation.InputError(f"{rule.name} takes the whole batch as one part; got {len(parts)} parts")
    if rule.descent_weights != "none" and weighted_grad is None:
        raise validation.InputError(f"{rule.name} needs weighted_grad, the Gibbs-weighted gradient at a point")
    total = None
    for part in parts:
        point = perturbed_point(rule, x, part, rho, grad, norm, reweighted_grad, draw)
        if rule.descent_weights == "all":
            g = weighted_grad(point, part)
        elif rule.descent_weights == "response":
            g = grad(x, part) + (weighted_grad(point, part) - weighted_grad(x, part))
        else:
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
    draw: Callable[[Any], Any] | None = None,
) -> Any:
    """The point ``x + rho * a`` (``a`` normalised for SAM variants) where ``part``'s gradient
    is taken: the one place that reads where a rule's ascent comes from."""
    if rule.ascent == "none" or _is_number_zero(rho):
        return x
    if rule.ascent == "full":
        ascent = grad(x, None)
    elif rule.ascent == "part":
        ascent = grad(x, part)
    elif rule.ascent_draw:
        if draw is None:
            raise validation.InputError(f"{rule.name} needs draw, the weighted draw of samples of the batch")
        ascent = grad(x, draw(part))
    else:
        if reweighted_grad is None:
            raise validation.InputError(f"{rule.name} needs reweighted_grad, the Gibbs-weighted ascent direction")
        ascent = reweighted_grad(x, part)
    if rule.scale is not None:
        ascent = scaled(rule.scale, x, ascent)
    if rule.normalized:
        ascent = ascent / norm(ascent)
    return x + rho * ascent


def _is_number_zero(rho: Any) -> bool:
    """Whether ``rho`` is a plain (Python or sympy) zero; a tensor is never taken for one, so
    that differentiating in rho (``torch.func.jvp``) sees the whole map."""
    if isinstance(rho, (int, float)) and not isinstance(rho, bool):
        return rho == 0
    return getattr(rho, "is_zero", False) is True


def scaled(scale: Callable[[Any], Any], x: Any, ascent: Any) -> Any:
    """``scale(x_k) * a_k`` for every coordinate: the elementwise preconditioner of a rule, on
    a sympy column vector (applied entry by entry) or a torch tensor (broadcast)."""
    if hasattr(ascent, "applyfunc"):
        factors = x.applyfunc(scale)
        return ascent.multiply_elementwise(factors)
    return scale(x) * ascent


def gibbs_weights(scores: Any, lam: float, dim: int = -1) -> Any:
    """RW-SAM's weights p_i = exp(lam s_i) / sum_j exp(lam s_j): the maximiser over the simplex
    of ``sum_i p_i s_i + H(P)/lam``. ``scores`` is a torch tensor (per-sample gradient norms)."""
    import torch

    validation.non_negative_number("lam", lam)
    return torch.softmax(lam * scores, dim=dim)


def reweighted_gradient(per_sample_grads: Any, lam: float) -> Any:
    """RW-SAM's ascent direction sum_i p_i grad f_i from per-sample gradients ``[..., B, d]``
    (a torch tensor), with p the Gibbs weights of the exact per-sample gradient norms."""
    weights = gibbs_weights(per_sample_grads.norm(dim=-1), lam)
    return (weights.unsqueeze(-1) * per_sample_grads).sum(dim=-2)
