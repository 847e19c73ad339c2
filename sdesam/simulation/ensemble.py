"""Many independent chains of a discrete SAM-family optimizer, vectorised over the chains.

The update rules come from :mod:`sdesam.algorithms` (one definition for the whole package);
this module evaluates them on torch tensors of shape ``[chains, d]`` with per-chain
mini-batches ``[chains, B]``. :func:`step` performs one update for given batch indices (so
tests and other code can drive it with their own batches) and :func:`run` draws the batches
from a seeded generator and iterates, keeping only what the caller asks for and freezing
chains that diverge (see :mod:`sdesam.simulation.chains`).

Gradients over a batch or micro-batch are taken, for problems with closed-form per-sample
gradients, from the chosen samples' gradient rows only (:meth:`Problem.subset_grads`, no VJP
through all N samples); problems defined only by their losses use one VJP per point.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from sdesam.progress import progress_bar

from . import memory
from .. import validation
from ..algorithms import (ANY, DESCENT_WEIGHTS, Rule, Support, check_sampling, check_sizes, direction,
                         get_rule, gibbs_weights)
from .chains import (DIVERGE_AT, ChainRun, Recorder, bound_test_functions, chunk_size, chunks,
                     record_count)
from .inputs import (batch_bytes, check_eta, draw_batches, draw_bytes, draw_uniforms,
                     drawn_positions, rule_lam, rule_rho, start_dtype, start_points)
from ..problems.base import Problem

SUPPORT = Support("the ensemble (sdesam.simulation.ensemble)", scaled=(False, True),
                  descent_weights=DESCENT_WEIGHTS, ascent_draw=ANY)
"""The rule facts the ensemble implements: every one (through :func:`sdesam.algorithms.direction`)."""


def supports(rule: Rule) -> str | None:
    """None when the ensemble implements ``rule``, else the fact it lacks."""
    return SUPPORT.reason(rule)


def step(problem: Problem, algorithm: "str | Rule", x: torch.Tensor, batch_idx: torch.Tensor, *,
         eta: float, rho: float | None = None, micro: int | None = None, lam: float | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One update ``x - eta * G(x)`` of ``algorithm`` for every chain: ``x [..., d]`` with the
    batch indices ``batch_idx [..., B]`` of each chain. For the m-rules the micro-batches are
    the consecutive blocks of ``micro`` indices of the batch; a rule that draws its
    perturbation draws from ``generator`` (required for it; see :func:`~sdesam.simulation.inputs.draw_uniforms`)."""
    rule = SUPPORT.require(get_rule(algorithm))
    check_eta(eta)
    rho = rule_rho(rule, rho)
    lam = rule_lam(rule, lam)
    batch_idx = torch.as_tensor(batch_idx, device=x.device)
    if batch_idx.dim() == 0 or batch_idx.shape[:-1] != x.shape[:-1]:
        raise validation.InputError(
            f"batch_idx must have shape [{', '.join(map(str, x.shape[:-1]))}, B] "
            f"to match x of shape {tuple(x.shape)}; got {tuple(batch_idx.shape)}")
    micro = check_sizes(rule, int(batch_idx.shape[-1]), micro)
    if rule.ascent_draw and generator is None:
        raise validation.InputError(f"generator is required by {rule.name!r}: it draws its "
                                    "perturbation from the batch (a seeded torch.Generator)")
    uniforms = None if generator is None else draw_uniforms(rule, generator, tuple(x.shape[:-1]),
                                                             x.dtype)
    return x - eta * update_direction(problem, rule, x, batch_idx, rho=rho, micro=micro, lam=lam,
                                      uniforms=uniforms)


def has_closed_form_grads(problem: Problem) -> bool:
    """Whether ``problem`` overrides :meth:`Problem.sample_grads` or
    :meth:`Problem.subset_grads` (closed-form per-sample gradients, so evaluating the chosen
    samples' rows beats a VJP through all N samples)."""
    cls = type(problem)
    return cls.sample_grads is not Problem.sample_grads or cls.subset_grads is not Problem.subset_grads


def part_grads(problem: Problem, points: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Mean gradient of each part at its point: ``points [..., J, d]``, ``parts [..., J, m]``
    -> ``[..., J, d]``: the chosen samples' gradient rows where the problem has them in closed
    form, one VJP through all N samples otherwise."""
    if not has_closed_form_grads(problem):
        return problem.grad(points, parts)
    return problem.subset_grads(points, parts).mean(dim=-2)


def update_direction(problem: Problem, rule: Rule, x: torch.Tensor, batch_idx: torch.Tensor,
                     *, rho: float, micro: int, lam: float,
                     uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """The direction G of ``rule`` at ``x [..., d]`` for batches ``batch_idx [..., B]``:
    :func:`sdesam.algorithms.direction` evaluated on tensors batched over chains and
    micro-batches (arguments assumed valid: see :func:`step`). The Gibbs weights of a weighted
    rule are those of the exact per-sample gradient norms at x; a rule that draws its
    perturbation takes its samples at ``uniforms [..., k]`` (:func:`~sdesam.simulation.inputs.drawn_positions`)."""
    parts = batch_idx.unflatten(-1, (-1, micro)) if rule.micro else batch_idx.unsqueeze(-2)
    points = x.unsqueeze(-2).expand(*parts.shape[:-1], x.shape[-1])   # [..., J, d]
    weights = batch_grads = None
    if rule.weighted and (rho != 0 or rule.descent_weights != "none"):
        batch_grads = problem.subset_grads(x, batch_idx)                  # [..., B, d]
        weights = gibbs_weights(batch_grads.norm(dim=-1), lam)           # [..., B]

    def grad(point: torch.Tensor, part: torch.Tensor | None) -> torch.Tensor:
        return problem.grad(point) if part is None else part_grads(problem, point, part)

    def weighted_grad(point: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        grads = batch_grads if point is points else problem.subset_grads(point[..., 0, :], batch_idx)
        return (weights.unsqueeze(-1) * grads).sum(dim=-2).unsqueeze(-2)

    def draw(part: torch.Tensor) -> torch.Tensor:
        return batch_idx.gather(-1, drawn_positions(weights, uniforms)).unsqueeze(-2)

    return direction(rule, points, [parts], rho, grad, _norm, reweighted_grad=weighted_grad,
                     weighted_grad=weighted_grad, draw=draw).mean(dim=-2)


def _norm(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each direction ``[..., d]``, kept as ``[..., 1]``."""
    return v.norm(dim=-1, keepdim=True)


def update_footprint(problem: Problem, batch: int) -> int:
    """Elements per chain of the temporaries of one update (points, perturbed points and
    gradient rows of a batch; a VJP's per-sample values)."""
    return (3 * batch + problem.n) * problem.dim


def run_chunk(problem: Problem, batch: int, chains: int, chunk: int | None) -> int:
    """The chains :func:`run` updates at once: ``chunk``, or by default as many as keep one
    update's temporaries within :data:`sdesam.simulation.chains.CHUNK_BYTES`."""
    if chunk is None:
        return chunk_size(chains, update_footprint(problem, batch))
    return validation.positive_int("chunk", chunk)


def run_parts(problem: Problem, *, batch: int, sampling: str, steps: int, chains: int,
              rule: "Rule | str | None" = None, every: int | None = 1, keep_states: bool = True, statistics: int = 0,
              chunk: int | None = None, dtype: torch.dtype = torch.float64,
              chains_argument: str = "chains") -> list[memory.Part]:
    """What :func:`run` with these settings holds in memory (see :mod:`sdesam.simulation.memory`;
    ``statistics``: the number of test functions), its chain count shown as ``chains_argument``;
    ``rule`` adds the draws of a rule that draws its perturbation."""
    rule = None if rule is None else get_rule(rule)
    return memory.chain_run_parts(
        chains, problem.dim, element_size=dtype.itemsize, records=record_count(steps, every),
        every=every, keep_states=keep_states, statistics=statistics,
        step_random_bytes=batch_bytes(problem.n, batch, sampling)
        + (0 if rule is None else draw_bytes(rule, dtype.itemsize)),
        chunk=run_chunk(problem, batch, chains, chunk), chunk_elements=update_footprint(problem, batch),
        chains_argument=chains_argument)


def run(problem: Problem, algorithm: "str | Rule", *, eta: float, rho: float | None = None, batch: int,
        micro: int | None = None, x0: Any, steps: int, chains: int, seed: int,
        sampling: str = "with-replacement", device: str | torch.device = "cpu",
        lam: float | None = None, every: int | None = 1, keep_states: bool = True,
        test_fns: Iterable[str] = (), diverge_at: float = DIVERGE_AT, chunk: int | None = None,
        progress: bool = False) -> ChainRun:
    """Run ``chains`` independent chains of ``algorithm`` for ``steps`` steps, each chain with
    its own mini-batches drawn from ``seed``.

    Returns a :class:`~sdesam.simulation.chains.ChainRun`: the end state, the diverged mask and count, and
    at steps ``0, every, 2 every, ..., steps`` (``every=None``: start and end) the states
    ``[records, chains, d]`` if ``keep_states`` and the mean / variance over live chains of
    each of ``test_fns`` (names of :data:`sdesam.simulation.chains.TEST_FUNCTIONS`). A chain whose state
    turns non-finite or exceeds ``diverge_at`` in norm is frozen and left out of statistics.
    ``rho`` is required by a rule with a perturbation (refused, unless 0, by one without);
    ``lam`` is RW-SAM's inverse temperature (refused by rules that do not take it); a rule
    that draws its perturbation draws from the same seeded generator as the batches;
    ``chunk`` chains are updated at a time (default: temporaries of about
    :data:`sdesam.simulation.chains.CHUNK_BYTES`). The same seed, device and dtype of ``x0`` give the
    same iterates, whatever the chunk. A run that would not fit in the device's available
    memory is refused before anything is allocated (:mod:`sdesam.simulation.memory`).
    """
    rule = SUPPORT.require(get_rule(algorithm))
    eta = check_eta(eta)
    rho = rule_rho(rule, rho)
    lam = rule_lam(rule, lam)
    check_sampling(sampling)
    micro = check_sizes(rule, batch, micro, problem.n, sampling)
    validation.positive_int("steps", steps)
    validation.positive_int("chains", chains)
    validation.device("device", str(device))
    statistics = bound_test_functions(problem, test_fns)
    chunk = run_chunk(problem, batch, chains, chunk)
    memory.require(run_parts(problem, batch=batch, sampling=sampling, steps=steps, chains=chains,
                             rule=rule, every=every, keep_states=keep_states, statistics=len(statistics),
                             chunk=chunk, dtype=start_dtype(x0)), device)
    x = start_points(x0, chains, problem.dim, device)
    recorder = Recorder(x, steps=steps, every=every, keep_states=keep_states,
                        statistics=statistics, diverge_at=diverge_at, chunk=chunk)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        for k in progress_bar(range(steps), desc=f"{rule.name} ensemble", show=progress,
                      leave=False):
            idx = draw_batches(generator, chains, problem.n, batch, sampling)
            uniforms = draw_uniforms(rule, generator, (chains,), x.dtype)
            for part in chunks(chains, recorder.chunk):
                old = x[part]
                new = old - eta * update_direction(
                    problem, rule, old, idx[part], rho=rho, micro=micro, lam=lam,
                    uniforms=None if uniforms is None else uniforms[part])
                x[part] = recorder.freeze(k, part, old, new)
            recorder.record(k + 1, x)
    return recorder.result(x, eta)
