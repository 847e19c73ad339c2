"""The diagnosis itself: a rule's first-order terms ``G0``, ``G1`` through
:func:`sdesam.algorithms.direction`, and per rule the push, bias, effective sample size and
noise-induced drift at a point (:func:`diagnose`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.func import jvp

from .. import validation
from ..algorithms import (ANY, DESCENT_WEIGHTS, Rule, Support, check_keywords, direction,
                          get_rule, gibbs_weights, rule_names)
from ..problems.base import Problem
from .batches import MAX_ENUMERATED, Batches
from ..simulation.inputs import rule_lam
from .problems import LocalQuadratic, ModuleProblem, batch_view

LOCAL_MODEL_DIM = 64
"""Problems up to this dimension are diagnosed on their :class:`LocalQuadratic` model."""

SUPPORT = Support("the implicit-regularisation diagnostic (sdesam.implicit)", scaled=(False, True),
                  descent_weights=DESCENT_WEIGHTS, ascent_draw=ANY)
"""The rule facts the diagnostic implements: every one (through :func:`sdesam.algorithms.direction`)."""


def supports(rule: Rule) -> str | None:
    """None when the diagnostic implements ``rule``, else the fact it lacks."""
    return SUPPORT.reason(rule)


@dataclass(frozen=True)
class Spec:
    """One rule setting to diagnose: the rule, its micro-batch size, its inverse temperature."""

    rule: Rule
    micro: int | None = None
    lam: float = 0.0

    @classmethod
    def of(cls, algorithm: "str | Rule", micro: int | None = None,
           lam: float | None = None) -> "Spec":
        """A checked spec: ``micro`` only for rules with micro-batches (a positive integer),
        ``lam`` only for Gibbs-weighted rules (>= 0; default
        :data:`~sdesam.algorithms.DEFAULT_LAM`); a rule the diagnostic does not implement is
        refused."""
        rule = SUPPORT.require(get_rule(algorithm))
        check_keywords(rule, micro=micro)
        if micro is not None:
            validation.positive_int("micro", micro)
        return cls(rule, micro, rule_lam(rule, lam))


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
