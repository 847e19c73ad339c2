"""Implicit regularisation of a rule: the noise-induced part of its first-order drift.

To first order in rho a rule's step is ``G = G0 + rho G1`` (:func:`sdesam.algorithms.direction`
differentiated in rho at rho = 0, so every rule is read from the registry by its facts). Its
drift is ``-E_S[G0 + rho G1]`` over the mini-batch S; the *noise-induced* first-order part is

    N1 = -(E_S[G1(S)] - G1_det),

``G1_det`` the same term of its deterministic counterpart (the rule with the perturbation along
the full gradient and the full-data descent gradient: n-SAM's ``H grad f/|grad f|`` for
normalised rules, n-USAM's ``H grad f`` for unnormalised ones; at a critical point, where
``grad f/|grad f|`` is undefined, ``G1_det`` is taken as 0, the smallest element of the
subdifferential of ``|grad f|``). For m-USAM, ``N1 = -c(m)/2 grad tr V`` exactly.

Reported per rule: the **push** ``<N1, -grad tr V>/|grad tr V|`` (per unit rho; > 0 lowers
tr V), the **equivalent m** (the micro-batch size at which m-SAM -- m-USAM for unnormalised
rules -- has the same push: interpolated linearly in log m between the divisors of B for the
normalised family, solved in closed form from the sampling factor c(m) for the unnormalised
one), the effective sample size ``1/sum p_i^2`` of Gibbs weights (mean over batches) and the
zeroth-order **bias** ``<E_S[G0] - grad f, grad tr V>/|grad tr V|`` (non-zero only for rules
whose descent gradient is weighted).

Expectations over S are exact, by enumeration of all ordered index tuples (small problems), or
Monte Carlo over sampled batches with standard errors; the same batches serve every rule, so
differences between rules are measured with common random numbers. Perturbations drawn from
the batch (:attr:`Rule.ascent_draw`) are averaged over draws inside each batch (exactly, by
enumerating the draws, in exact mode). A network enters as a :class:`ModuleProblem`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from . import per_sample, validation
from .algorithms import (Rule, direction, get_rule, gibbs_weights, rule_names, check_sampling)
from .problems.base import Problem

MAX_ENUMERATED = 300_000
"""The most index tuples (times draws) that exact enumeration evaluates."""

LOCAL_MODEL_DIM = 64
"""Problems up to this dimension are diagnosed on their :class:`LocalQuadratic` model."""


# ---------------------------------------------------------------------- networks as problems
class ModuleProblem(Problem):
    """Per-sample losses of an ``nn.Module`` as functions of its flat trainable parameters
    ``x [..., P]`` (``named_parameters`` order, as :mod:`sdesam.per_sample`), evaluated in
    eval mode. With ``rows=True`` the data carry a leading row dimension matching ``x``'s
    (``inputs [K, n, ...]`` for ``x [K, P]``): row k is the network on its own batch."""

    def __init__(self, model: nn.Module, loss_fn: per_sample.LossFn, inputs: torch.Tensor,
                 targets: torch.Tensor, *, rows: bool = False,
                 parent: "ModuleProblem | None" = None) -> None:
        params = per_sample.trainable_parameters(model)
        if not params:
            raise validation.InputError("model has no parameter that requires grad")
        if parent is None:  # a batch view holds rows of its parent's data, already checked
            validation.finite_tensor("inputs", inputs)
            validation.finite_tensor("targets", targets)
        self.model, self.loss_fn, self.rows, self.parent = model, loss_fn, rows, parent
        self.inputs, self.targets = inputs, targets
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.constants.update(dict(model.named_buffers()))
        self.n = int(inputs.shape[1] if rows else inputs.shape[0])
        self.dim = sum(self.sizes)

    def point(self) -> torch.Tensor:
        """The model's current parameters as one flat vector ``[P]``."""
        return torch.cat([p.detach().reshape(-1) for p in per_sample.trainable_parameters(self.model).values()])

    def _losses_one(self, theta: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[n]`` of the network with flat parameters ``theta [P]``."""
        pieces = theta.split(self.sizes)
        params = {n: piece.reshape(s) for n, piece, s in zip(self.names, pieces, self.shapes)}
        return self.loss_fn(functional_call(self.model, (params, self.constants), (inputs,)), targets)

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``f_i(x)``: ``[..., P] -> [..., n]`` (rows: ``[K, P] -> [K, n]``)."""
        self._check_point(x)
        with per_sample._eval_mode(self.model):
            if self.rows:
                return vmap(self._losses_one)(x, self.inputs, self.targets)
            flat = x.reshape(-1, self.dim)
            out = vmap(self._losses_one, in_dims=(0, None, None))(flat, self.inputs, self.targets)
            return out.reshape(*x.shape[:-1], self.n)

    def grad(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean gradient over ``idx``; ``None`` is the full data (the parent's, for a batch view)."""
        if idx is None and self.parent is not None:
            return self.parent.grad(x)
        return super().grad(x, idx)

    def restrict(self, idx: torch.Tensor) -> "ModuleProblem":
        """Row k: the network on the samples ``idx[k]`` (``idx [K, B]`` into the full data)."""
        return ModuleProblem(self.model, self.loss_fn, self.inputs[idx], self.targets[idx],
                             rows=True, parent=self)


class LocalQuadratic(Problem):
    """The second-order Taylor model at ``x0`` of every per-sample loss of ``problem``:
    ``f_i(x0) + g_i . dx + dx^T H_i dx / 2``. Its gradients and Hessians at ``x0`` are the
    problem's, so every rule's ``G0`` and ``G1`` (which need no more) are exactly the
    problem's; evaluated in closed form, it makes the diagnosis of small problems cheap.
    Per-sample Hessians ``[N, d, d]`` are formed, so keep it to small d."""

    def __init__(self, problem: Problem, x0: torch.Tensor) -> None:
        self.n, self.dim = problem.n, problem.dim
        self.x0 = x0.detach()
        self.values = problem.sample_losses(self.x0).detach()
        self.grads = problem.sample_grads(self.x0).detach()                      # [N, d]
        self.hessians = torch.func.jacfwd(problem.sample_grads)(self.x0).detach()  # [N, d, d]

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """The quadratic models ``[..., N]``."""
        dx = x - self.x0
        curvature = torch.einsum("...d,nde,...e->...n", dx, self.hessians, dx)
        return self.values + dx @ self.grads.T + curvature / 2

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``g_i + H_i dx``: ``[..., N, d]``."""
        return self.grads + torch.einsum("nde,...e->...nd", self.hessians, x - self.x0)

    def weighted_grad(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i (g_i + H_i dx)``: ``[..., d]``."""
        return (weights @ self.grads
                + torch.einsum("...n,nde,...e->...d", weights, self.hessians, x - self.x0))


class _BatchView(Problem):
    """Row k of ``x [K, d]``: the samples ``idx[k]`` of ``parent`` (``n = B``); ``grad(x, None)``
    stays the parent's full-data gradient."""

    def __init__(self, parent: Problem, idx: torch.Tensor) -> None:
        self.parent, self.idx = parent, idx
        self.n, self.dim = int(idx.shape[-1]), parent.dim

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``f_{idx[k, b]}(x_k)``: ``[K, d] -> [K, B]``."""
        return self.parent.sample_losses(x).gather(-1, self.idx)

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients of the batch: ``[K, B, d]``."""
        grads = self.parent.sample_grads(x)
        return grads.gather(-2, self.idx.unsqueeze(-1).expand(*self.idx.shape, self.dim))

    def weighted_grad(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_b w_b grad f_{idx[k, b]}(x_k)`` through the parent's ``weighted_grad``."""
        spread = torch.zeros(*self.idx.shape[:-1], self.parent.n, dtype=weights.dtype,
                             device=weights.device)
        return self.parent.weighted_grad(x, spread.scatter_add(-1, self.idx, weights))

    def grad(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean gradient over ``idx`` (positions in the batch); ``None``: the parent's full data."""
        return self.parent.grad(x) if idx is None else super().grad(x, idx)


def batch_view(problem: Problem, idx: torch.Tensor) -> Problem:
    """The problem whose row k holds the batch ``idx[k]`` of ``problem`` (``idx [K, B]``)."""
    if isinstance(problem, ModuleProblem):
        return problem.restrict(idx)
    return _BatchView(problem, idx)


# ---------------------------------------------------------------------- batches
@dataclass(frozen=True)
class Batches:
    """Index tuples ``idx [K, B]`` with probabilities ``prob [K]`` (exact) or None (sampled)."""

    idx: torch.Tensor
    prob: torch.Tensor | None

    @property
    def exact(self) -> bool:
        """Whether these are all the tuples, with their probabilities."""
        return self.prob is not None


def enumerate_batches(n: int, batch: int, sampling: str) -> Batches:
    """Every ordered tuple of ``batch`` indices out of ``n`` (with replacement: ``n^B``; without:
    ``n!/(n-B)!``), each equally likely; ordered, so consecutive micro-batches are uniform."""
    check_sampling(sampling)
    validation.positive_int("batch", batch)
    count = n**batch if sampling == "with-replacement" else math.perm(n, batch)
    if count > MAX_ENUMERATED:
        raise validation.InputError(f"exact enumeration of {count} index tuples (n={n}, "
                                    f"batch={batch}) exceeds {MAX_ENUMERATED}; sample batches instead")
    tuples = (itertools.product(range(n), repeat=batch) if sampling == "with-replacement"
              else itertools.permutations(range(n), batch))
    idx = torch.tensor(list(tuples), dtype=torch.long).reshape(count, batch)
    return Batches(idx, torch.full((count,), 1.0 / count, dtype=torch.float64))


def sample_batches(n: int, batch: int, count: int, sampling: str,
                   generator: torch.Generator) -> Batches:
    """``count`` uniform batches (i.i.d. indices, or a uniform subset in random order)."""
    from .simulation.ensemble import draw_batches

    check_sampling(sampling)
    validation.positive_int("count", count)
    if sampling == "without-replacement" and batch > n:
        raise validation.InputError(f"batch must be at most n={n} without replacement; got {batch}")
    return Batches(draw_batches(generator, count, n, batch, sampling), None)


# ---------------------------------------------------------------------- what is diagnosed
@dataclass(frozen=True)
class Spec:
    """One rule setting to diagnose: the rule, its micro-batch size, its inverse temperature."""

    rule: Rule
    micro: int | None = None
    lam: float = 0.0

    @classmethod
    def of(cls, algorithm: "str | Rule", micro: int | None = None, lam: float = 0.0) -> "Spec":
        """A checked spec: ``micro`` only for rules with micro-batches, ``lam >= 0``."""
        rule = get_rule(algorithm)
        if rule.micro != (micro is not None):
            raise validation.InputError(f"micro is {'required' if rule.micro else 'refused'} by "
                                        f"{rule.name!r}; got micro={micro!r}")
        return cls(rule, micro, validation.non_negative_number("lam", lam))


def deterministic_counterpart(rule: Rule) -> Rule:
    """The rule's full-batch counterpart: the same normalisation and scale, the perturbation
    along the full gradient and the full-data descent gradient (no perturbation for SGD)."""
    return Rule(f"{rule.family}-deterministic", "full" if rule.perturbed else "none",
                rule.normalized, False, "deterministic counterpart", scale=rule.scale)


def micro_family_rule(rule: Rule) -> Rule:
    """The registered m-rule of ``rule``'s family (m-SAM for normalised, m-USAM otherwise)."""
    names = rule_names(lambda r: r.micro and r.perturbed and r.normalized == rule.normalized
                       and r.scale is None and not r.extended)
    if not names:
        raise validation.InputError(f"no registered rule with micro-batches shares {rule.name!r}'s "
                                    "normalisation")
    return get_rule(names[0])


# ---------------------------------------------------------------------- first-order terms
def first_order_terms(spec: Spec, view: Problem, x: torch.Tensor,
                      drawn: torch.Tensor | None = None, norms: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``G0 [K, d]``, ``G1 = dG/drho at rho = 0 [K, d]`` and the weights' effective sample size
    ``[K]`` of ``spec``'s rule on the batches of ``view`` at points ``x [K, d]``, through
    :func:`sdesam.algorithms.direction` with the whole row as its one part (for an m-rule a
    row is one micro-batch: :func:`direction` averages its parts linearly, so the mean over
    the micro-batch rows of a batch is the rule's direction on it). ``drawn [K, k]``: the
    samples (positions in the batch) of a rule that draws its perturbation; ``norms [K, B]``:
    the per-sample gradient norms at x when the caller has them (else computed here)."""
    rule, batch = spec.rule, view.n
    rows = x.shape[0]
    if norms is None:
        norms = view.sample_grads(x).detach().norm(dim=-1)                  # [K, B]

    def gibbs(idx: torch.Tensor) -> torch.Tensor:
        probs = gibbs_weights(norms.gather(-1, idx), spec.lam)
        return torch.zeros_like(norms).scatter_add_(-1, idx, probs)

    every = torch.arange(batch, device=x.device).expand(rows, batch)
    weights = gibbs(every) if rule.weighted else torch.full_like(norms, 1.0 / batch)

    def weighted(point: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return view.weighted_grad(point, weights)

    def step(rho: torch.Tensor) -> torch.Tensor:
        return direction(rule, x, [every], rho, grad=view.grad, norm=_safe_norm,
                         reweighted_grad=weighted, weighted_grad=weighted,
                         draw=lambda idx: drawn)

    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    g0, g1 = jvp(step, (zero,), (torch.ones_like(zero),))
    return g0.detach(), g1.detach(), 1.0 / weights.square().sum(-1)


@dataclass
class _Accumulator:
    """Per-batch values of one spec, gathered chunk by chunk."""

    push: list[torch.Tensor]
    bias: list[torch.Tensor]
    ess: list[torch.Tensor]
    g1_sum: torch.Tensor
    weight_sum: float = 0.0


def diagnose(problem: Problem, x: torch.Tensor, specs: Sequence[Spec], batches: Batches, *,
             draws: int = 8, generator: torch.Generator | None = None, chunk: int = 256,
             critical_tol: float = 1e-6, sampling: str = "with-replacement",
             local_model: bool | None = None, groups: int = 20,
             progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """The first-order implicit-regularisation diagnosis of every spec at one point ``x [d]``.

    Returns one record per spec (``algorithm``, ``micro``, ``lam``, ``push``,
    ``push_stderr``, ``drift_norm`` (``|N1|``), ``alignment`` (push / ``|N1|``: the cosine
    between the noise-induced drift and -grad tr V), ``bias``, ``bias_stderr``, ``ess``,
    ``ess_stderr``, ``batches``, ``exact``) plus the point's ``grad_trace_V_norm`` and
    ``critical`` flag, and for sampled batches ``push_jackknife``: the push without each of
    ``groups`` blocks of batches; :func:`add_equivalent_m` turns those into the error of the
    equivalent m and removes them, leaving flat records. ``draws``: Monte-Carlo draws per batch of
    a rule that draws its perturbation (exact mode enumerates them). ``sampling`` is recorded
    for the equivalent m of unnormalised rules. ``local_model``: evaluate the rules on the
    :class:`LocalQuadratic` model at x (the same ``G0``, ``G1``; default for problems of
    dimension <= :data:`LOCAL_MODEL_DIM`, never for networks). ``progress(rows)`` is called
    after each chunk.
    """
    validation.positive_int("draws", draws)
    validation.positive_int("chunk", chunk)
    x = x.detach()
    if local_model is None:
        local_model = not isinstance(problem, ModuleProblem) and problem.dim <= LOCAL_MODEL_DIM
    if local_model:
        problem = LocalQuadratic(problem, x)
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    full_grad = problem.grad(x)
    grads, hvp = problem.sample_grads_with_hvp(x)
    grad_trace = (2.0 / problem.n) * hvp(grads - grads.mean(dim=-2, keepdim=True)).detach()
    trace_norm = float(grad_trace.norm())
    direction_tr = grad_trace / trace_norm if trace_norm > 0 else grad_trace
    norms = grads.detach().norm(dim=-1)                                      # [N]
    critical = float(full_grad.norm()) <= critical_tol * float(norms.mean())
    references: dict[tuple[bool, Any], torch.Tensor] = {}
    acc: dict[int, _Accumulator] = {}
    for k, spec in enumerate(specs):
        key = (spec.rule.normalized, spec.rule.scale, spec.rule.perturbed)
        if key not in references:
            references[key] = _reference_g1(spec.rule, problem, x, critical)
        acc[k] = _Accumulator([], [], [], torch.zeros_like(x))
    for start in range(0, batches.idx.shape[0], chunk):
        idx = batches.idx[start:start + chunk].to(x.device)
        prob = None if batches.prob is None else batches.prob[start:start + chunk].to(x)
        for k, spec in enumerate(specs):
            push, bias, ess, g1_sum, wsum = _chunk_values(
                spec, problem, x, idx, prob, draws, generator, references, direction_tr,
                full_grad, norms)
            acc[k].push.append(push)
            acc[k].bias.append(bias)
            acc[k].ess.append(ess)
            acc[k].g1_sum += g1_sum
            acc[k].weight_sum += wsum
        if progress is not None:
            progress(idx.shape[0])
    records = []
    for k, spec in enumerate(specs):
        a = acc[k]
        reference = references[(spec.rule.normalized, spec.rule.scale, spec.rule.perturbed)]
        drift = -(a.g1_sum / a.weight_sum - reference)
        values = torch.cat(a.push)
        push, push_se = _summary(values, batches)
        bias, bias_se = _summary(torch.cat(a.bias), batches)
        ess, ess_se = _summary(torch.cat(a.ess), batches)
        records.append({"rule": spec.rule.name, "label": spec.rule.label,
                        "micro": spec.micro, "lam": spec.lam, "push": push, "push_stderr": push_se,
                        "drift_norm": float(drift.norm()), "bias": bias, "bias_stderr": bias_se,
                        "ess": ess, "ess_stderr": ess_se, "batches": int(batches.idx.shape[0]),
                        "batch": int(batches.idx.shape[1]), "exact": batches.exact,
                        "sampling": sampling, "n": problem.n,
                        "alignment": push / float(drift.norm()) if float(drift.norm()) > 0 else None,
                        "grad_trace_V_norm": trace_norm, "critical": critical,
                        "push_jackknife": None if batches.exact else _leave_one_out(values, groups)})
    return records


def _leave_one_out(values: torch.Tensor, groups: int) -> list[float]:
    """Means of ``values`` without each of ``groups`` consecutive blocks (the jackknife
    replicates from which :func:`add_equivalent_m` takes the error of the equivalent m)."""
    blocks = torch.stack([b.mean() for b in values.tensor_split(min(groups, values.shape[0]))])
    sizes = torch.tensor([b.shape[0] for b in values.tensor_split(min(groups, values.shape[0]))],
                         dtype=values.dtype)
    total = (blocks * sizes).sum()
    return ((total - blocks * sizes) / (sizes.sum() - sizes)).tolist()


def noise_induced_drift(problem: Problem, x: torch.Tensor, spec: Spec, batches: Batches, *,
                        draws: int = 8, generator: torch.Generator | None = None,
                        critical_tol: float = 1e-6) -> torch.Tensor:
    """The noise-induced first-order drift vector ``N1 [d]`` of one spec (per unit rho)."""
    x = x.detach()
    norms = problem.sample_grads(x).detach().norm(dim=-1)
    critical = float(problem.grad(x).norm()) <= critical_tol * float(norms.mean())
    reference = _reference_g1(spec.rule, problem, x, critical)
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    _, _, _, g1_sum, wsum = _chunk_values(spec, problem, x, batches.idx.to(x.device),
                                          None if batches.prob is None else batches.prob.to(x),
                                          draws, generator, {}, torch.zeros_like(x),
                                          torch.zeros_like(x), norms)
    return -(g1_sum / wsum - reference)


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` over the last dimension, floored at the dtype's smallest normal number, so that
    a batch whose ascent direction is exactly zero is not perturbed (``g/(|g| + eps)``)."""
    return v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _reference_g1(rule: Rule, problem: Problem, x: torch.Tensor, critical: bool) -> torch.Tensor:
    """``G1`` of the deterministic counterpart at ``x`` (0 for normalised rules at a critical point)."""
    if not rule.perturbed or (critical and rule.normalized):
        return torch.zeros_like(x)
    counterpart = deterministic_counterpart(rule)

    def step(rho: torch.Tensor) -> torch.Tensor:
        return direction(counterpart, x, [None], rho, grad=problem.grad, norm=_safe_norm)

    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return jvp(step, (zero,), (torch.ones_like(zero),))[1].detach()


def _chunk_values(spec: Spec, problem: Problem, x: torch.Tensor, idx: torch.Tensor,
                  prob: torch.Tensor | None, draws: int, generator: torch.Generator,
                  references: dict, direction_tr: torch.Tensor, full_grad: torch.Tensor,
                  norms: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Per-batch push, bias and ESS ``[b]`` of one chunk of batches ``idx [b, B]``, and the
    (probability-)weighted sum of ``G1`` with the total weight; ``norms [N]`` are the
    per-sample gradient norms at x."""
    rule, (count, batch) = spec.rule, idx.shape
    key = (rule.normalized, rule.scale, rule.perturbed)
    reference = references.get(key, torch.zeros_like(x))
    rows, draw_weight, drawn = idx, None, None
    if rule.ascent_draw:
        rows, draw_weight, drawn = _draws(spec, idx, norms[idx], prob is not None, draws, generator)
    if rule.micro:                                   # one row per micro-batch, equal weights
        rows = idx.reshape(-1, spec.micro)
        draw_weight = torch.full((rows.shape[0],), spec.micro / batch, dtype=x.dtype, device=x.device)
    view = batch_view(problem, rows)
    g0, g1, ess = first_order_terms(spec, view, x.expand(rows.shape[0], x.shape[-1]), drawn,
                                    norms[rows])
    push = (g1 - reference) @ direction_tr
    bias = (g0 - full_grad) @ direction_tr
    if draw_weight is not None:                      # average over the draws of each batch
        push = (push * draw_weight).reshape(count, -1).sum(-1)
        bias = (bias * draw_weight).reshape(count, -1).sum(-1)
        ess = ess.reshape(count, -1)[:, 0]
        g1 = (g1 * draw_weight.unsqueeze(-1)).reshape(count, -1, g1.shape[-1]).sum(-2)
    weights = prob if prob is not None else torch.ones(count, dtype=x.dtype, device=x.device)
    return push, bias, ess, (weights.unsqueeze(-1) * g1).sum(0), float(weights.sum())


def _draws(spec: Spec, idx: torch.Tensor, batch_norms: torch.Tensor, exact: bool, draws: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows repeated once per draw, each draw's weight within its batch and the drawn
    positions ``[rows, k]``: every ordered k-tuple with its probability (exact), or ``draws``
    multinomial draws of weight 1/draws. ``batch_norms [count, B]``: the per-sample gradient
    norms of the batches ``idx``."""
    count, batch = idx.shape
    k = spec.rule.ascent_draw
    probs = gibbs_weights(batch_norms, spec.lam)                             # [count, B]
    if exact:
        if count * batch**k > MAX_ENUMERATED:
            raise validation.InputError(f"exact enumeration of {batch**k} draws per batch is too "
                                        "large; sample batches instead")
        tuples = torch.tensor(list(itertools.product(range(batch), repeat=k)),
                              dtype=torch.long, device=batch_norms.device).reshape(-1, k)       # [R, k]
        drawn = tuples.expand(count, -1, -1)                                          # [c, R, k]
        weight = probs.unsqueeze(1).expand(-1, tuples.shape[0], -1).gather(-1, drawn).prod(-1)
    else:
        flat = torch.multinomial(probs.repeat_interleave(draws, 0), k, replacement=True,
                                 generator=generator)
        drawn = flat.reshape(count, draws, k)
        weight = torch.full((count, draws), 1.0 / draws, dtype=batch_norms.dtype, device=batch_norms.device)
    repeats = drawn.shape[1]
    return (idx.repeat_interleave(repeats, 0), weight.reshape(-1).to(batch_norms),
            drawn.reshape(-1, k))


def _summary(values: torch.Tensor, batches: Batches) -> tuple[float, float]:
    """Expectation over batches and its standard error (0 when exact)."""
    if batches.exact:
        return float((values * batches.prob.to(values)).sum()), 0.0
    count = values.shape[0]
    stderr = float(values.std(unbiased=True) / math.sqrt(count)) if count > 1 else 0.0
    return float(values.mean()), stderr


# ---------------------------------------------------------------------- equivalent m
def divisors(batch: int) -> list[int]:
    """The divisors of ``batch`` in increasing order (the micro-batch sizes m-rules accept)."""
    return [m for m in range(1, batch + 1) if batch % m == 0]


def equivalent_m(push: float, push_stderr: float, curve: Sequence[tuple[int, float, float]],
                 ) -> tuple[float | None, float | None, str | None]:
    """The micro-batch size at which the m-rule curve ``[(m, push, stderr)]`` (m increasing)
    reaches ``push``: linear interpolation in log m between neighbouring divisors; the standard
    error by the delta method from both errors (conservative: common batches correlate them).
    Outside the curve: ``(None, None, "below_1")`` (stronger than its smallest m) or
    ``"above_B"`` (weaker than its largest m)."""
    ms = [c[0] for c in curve]
    values = [c[1] for c in curve]
    for (m0, p0, s0), (m1, p1, s1) in zip(curve, curve[1:]):
        if min(p0, p1) <= push <= max(p0, p1):
            if p0 == p1:
                return float(m0 if push == p0 else m1), 0.0, None
            t = (push - p0) / (p1 - p0)
            m = math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
            slope = (p1 - p0) / (math.log(m1) - math.log(m0)) / m           # dP/dm at m
            curve_se = (1 - t) * s0 + t * s1
            return m, math.hypot(push_stderr, curve_se) / abs(slope), None
    if len(ms) == 1 and push == values[0]:
        return float(ms[0]), 0.0, None
    strongest = values[0]
    return None, None, "below_1" if (push > strongest) == (values[0] >= values[-1]) else "above_B"


def equivalent_m_continuous(push: float, push_stderr: float, trace_norm: float, n: int,
                            sampling: str) -> tuple[float | None, float | None, str | None]:
    """m solving ``c(m)/2 |grad tr V| = push`` (m-USAM's exact push), continuous in m, with
    its delta-method standard error; None with the reason when no m >= 1 solves it."""
    if trace_norm <= 0:
        return None, None, "flat_trace"
    c = 2.0 * push / trace_norm
    c_se = 2.0 * push_stderr / trace_norm
    if c <= 0:
        return None, None, "above_B"
    if sampling == "with-replacement":
        m, slope = 1.0 / c, 1.0 / c**2
    else:
        m, slope = n / (c * (n - 1) + 1), n * (n - 1) / (c * (n - 1) + 1) ** 2
    if m < 1 - 1e-9:
        return None, None, "below_1"
    return m, slope * c_se, None


def add_equivalent_m(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``equivalent_m``, ``equivalent_m_stderr``, ``equivalent_m_bound`` and
    ``equivalent_m_method`` to the records of one point (from :func:`diagnose`): by the
    divisors of B against the records of the m-rule of the family (normalised rules; those
    records must be present; error by the jackknife over blocks of batches when sampled, else
    the delta method), by the sampling factor (unnormalised rules, delta method); then drop
    the jackknife replicates."""
    solved = []
    for record in records:
        rule = get_rule(record["rule"])
        result: dict[str, Any] = dict(equivalent_m=None, equivalent_m_stderr=None,
                                      equivalent_m_bound=None, equivalent_m_method=None)
        if rule.perturbed:
            if rule.normalized:
                family = [r for r in records if r["rule"] == micro_family_rule(rule).name]
                family.sort(key=lambda r: r["micro"])
                if family:
                    result = _equivalent_m_divisors(record, family)
            else:
                m, se, bound = equivalent_m_continuous(record["push"], record["push_stderr"],
                                                       record["grad_trace_V_norm"], record["n"],
                                                       record["sampling"])
                result = dict(equivalent_m=m, equivalent_m_stderr=se, equivalent_m_bound=bound,
                              equivalent_m_method="sampling-factor")
        solved.append(result)
    for record, result in zip(records, solved):
        record.update(result)
        record.pop("push_jackknife", None)
    return records


def _equivalent_m_divisors(record: dict[str, Any], family: list[dict[str, Any]]) -> dict[str, Any]:
    """Equivalent m against the m-rule records ``family`` (m increasing); the error from the
    jackknife over blocks of common batches when the records carry it (sampled batches), so
    the correlation between the rule and the curve is accounted for."""
    curve = [(r["micro"], r["push"], r["push_stderr"]) for r in family]
    m, se, bound = equivalent_m(record["push"], record["push_stderr"], curve)
    replicates = record.get("push_jackknife")
    if m is not None and replicates and all(r.get("push_jackknife") for r in family):
        values = []
        for g, push in enumerate(replicates):
            other = [(c[0], r["push_jackknife"][g], 0.0) for c, r in zip(curve, family)]
            values.append(equivalent_m(push, 0.0, other)[0])
        if all(v is not None for v in values):
            mean = sum(values) / len(values)
            se = math.sqrt((len(values) - 1) / len(values) * sum((v - mean) ** 2 for v in values))
    return dict(equivalent_m=m, equivalent_m_stderr=se, equivalent_m_bound=bound,
                equivalent_m_method="divisors")


# ---------------------------------------------------------------------- cost
def passes_per_step(rule: Rule, batch: int, micro: int | None = None) -> dict[str, float]:
    """Cost of one step read from the rule's facts: ``forward_equivalents`` (a backward pass
    counts two forwards; one unit = a forward pass over the batch) and ``perturbations``
    (perturbed points per step, each its own forward/backward: B/m for m-rules). Gibbs weights
    cost one forward at ``x + delta z`` (the poster's finite-difference norms); a drawn
    perturbation re-runs only its k samples; a weighted response needs the mean and the
    weighted gradient at x."""
    if not rule.perturbed:
        return {"forward_equivalents": 3.0, "perturbations": 0}
    cost = 6.0
    if rule.weighted:
        cost += 1.0
        if rule.ascent_draw:
            cost += -2.0 + 3.0 * rule.ascent_draw / batch
        if rule.descent_weights == "response":
            cost += 2.0
    perturbations = batch // micro if rule.micro else 1
    return {"forward_equivalents": cost, "perturbations": perturbations}
