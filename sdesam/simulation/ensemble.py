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
from ..algorithms import (check_keywords, check_rho, check_sampling, check_sizes, get_rule,
                         reweighted_gradient, scaled)
from .chains import (DIVERGE_AT, ChainRun, Recorder, bound_test_functions, chunk_size, chunks,
                     record_count)
from ..problems.base import Problem

DEFAULT_LAM = 1.0
"""RW-SAM's inverse temperature when a weighted rule is run without ``lam``."""


def check_eta(eta: Any) -> float:
    """The learning rate ``eta`` as a float if it is a positive number (see :mod:`sdesam.validation`)."""
    return validation.positive_number("eta", eta)


def rule_lam(rule: Any, lam: float | None) -> float:
    """``lam`` checked against ``rule``: refused unless the rule takes it; a weighted rule
    without it gets :data:`DEFAULT_LAM`; 0.0 (unused) for the others."""
    check_keywords(rule, lam=lam)
    if not rule.weighted:
        return 0.0
    return validation.non_negative_number("lam", DEFAULT_LAM if lam is None else lam)


def start_dtype(x0: Any) -> torch.dtype:
    """The dtype of the start points made from ``x0``: a floating tensor's own, else float64."""
    return x0.dtype if isinstance(x0, torch.Tensor) and x0.is_floating_point() else torch.float64


def start_points(x0: Any, chains: int, dim: int, device: str | torch.device) -> torch.Tensor:
    """The ``[chains, d]`` starting points from ``x0`` of shape ``[d]`` (shared) or
    ``[chains, d]``, of :func:`start_dtype`. Non-finite start points are refused."""
    x0 = torch.as_tensor(x0, dtype=start_dtype(x0), device=device)
    if x0.shape not in ((dim,), (chains, dim)):
        raise validation.InputError(f"x0 must have shape [{dim}] or [{chains}, {dim}]; "
                                    f"got {tuple(x0.shape)}")
    validation.finite_tensor("x0", x0)
    return x0.expand(chains, dim).clone()


def step(problem: Problem, algorithm: str, x: torch.Tensor, batch_idx: torch.Tensor, *,
         eta: float, rho: float, micro: int | None = None, lam: float | None = None) -> torch.Tensor:
    """One update ``x - eta * G(x)`` of ``algorithm`` for every chain: ``x [..., d]`` with the
    batch indices ``batch_idx [..., B]`` of each chain. For the m-rules the micro-batches are
    the consecutive blocks of ``micro`` indices of the batch."""
    rule = get_rule(algorithm)
    check_eta(eta)
    check_rho(rho)
    lam = rule_lam(rule, lam)
    batch_idx = torch.as_tensor(batch_idx, device=x.device)
    if batch_idx.dim() == 0 or batch_idx.shape[:-1] != x.shape[:-1]:
        raise validation.InputError(
            f"batch_idx must have shape [{', '.join(map(str, x.shape[:-1]))}, B] "
            f"to match x of shape {tuple(x.shape)}; got {tuple(batch_idx.shape)}")
    micro = check_sizes(rule, int(batch_idx.shape[-1]), micro)
    return x - eta * update_direction(problem, rule.name, x, batch_idx, rho=rho, micro=micro, lam=lam)


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


def update_direction(problem: Problem, algorithm: str, x: torch.Tensor, batch_idx: torch.Tensor,
                     *, rho: float, micro: int, lam: float) -> torch.Tensor:
    """The direction G of ``algorithm`` at ``x [..., d]`` for batches ``batch_idx [..., B]``,
    vectorised over chains and micro-batches (arguments assumed valid: see :func:`step`)."""
    rule = get_rule(algorithm)
    parts = batch_idx.unflatten(-1, (-1, micro)) if rule.micro else batch_idx.unsqueeze(-2)
    points = x.unsqueeze(-2).expand(*parts.shape[:-1], x.shape[-1])  # [..., J, d]
    if rule.ascent != "none" and rho != 0:
        if rule.ascent == "full":
            ascent = problem.grad(x).unsqueeze(-2)
        elif rule.ascent == "part":
            ascent = part_grads(problem, points, parts)
        else:
            batch_grads = problem.subset_grads(x, batch_idx)
            ascent = reweighted_gradient(batch_grads, lam).unsqueeze(-2)
        if rule.scale is not None:
            ascent = scaled(rule.scale, points, ascent)
        if rule.normalized:
            ascent = ascent / ascent.norm(dim=-1, keepdim=True)
        points = points + rho * ascent
    return part_grads(problem, points, parts).mean(dim=-2)


def batch_bytes(n: int, batch: int, sampling: str) -> int:
    """Bytes per chain :func:`draw_batches` allocates for one step: the indices (int64), and
    without replacement the float32 sort keys of every sample and the top-``batch`` values."""
    return batch * 8 if sampling == "with-replacement" else n * 4 + batch * 12


def draw_batches(generator: torch.Generator, chains: int, n: int, batch: int,
                 sampling: str) -> torch.Tensor:
    """``[chains, batch]`` uniform sample indices, independent across chains: i.i.d. draws
    (with replacement) or a uniformly random ``batch``-subset in random order (without)."""
    device = generator.device
    if sampling == "with-replacement":
        return torch.randint(0, n, (chains, batch), generator=generator, device=device)
    keys = torch.rand(chains, n, generator=generator, device=device)
    return keys.topk(batch, dim=-1, sorted=True).indices


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
              every: int | None = 1, keep_states: bool = True, statistics: int = 0,
              chunk: int | None = None, dtype: torch.dtype = torch.float64,
              chains_argument: str = "chains") -> list[memory.Part]:
    """What :func:`run` with these settings holds in memory (see :mod:`sdesam.simulation.memory`;
    ``statistics``: the number of test functions), its chain count shown as ``chains_argument``."""
    return memory.chain_run_parts(
        chains, problem.dim, element_size=dtype.itemsize, records=record_count(steps, every),
        every=every, keep_states=keep_states, statistics=statistics,
        step_random_bytes=batch_bytes(problem.n, batch, sampling),
        chunk=run_chunk(problem, batch, chains, chunk), chunk_elements=update_footprint(problem, batch),
        chains_argument=chains_argument)


def run(problem: Problem, algorithm: str, *, eta: float, rho: float, batch: int,
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
    ``lam`` is RW-SAM's inverse temperature (refused by rules that do not take it);
    ``chunk`` chains are updated at a time (default: temporaries of about
    :data:`sdesam.simulation.chains.CHUNK_BYTES`). The same seed, device and dtype of ``x0`` give the
    same iterates, whatever the chunk. A run that would not fit in the device's available
    memory is refused before anything is allocated (:mod:`sdesam.simulation.memory`).
    """
    rule = get_rule(algorithm)
    eta = check_eta(eta)
    check_rho(rho)
    lam = rule_lam(rule, lam)
    check_sampling(sampling)
    micro = check_sizes(rule, batch, micro, problem.n, sampling)
    validation.positive_int("steps", steps)
    validation.positive_int("chains", chains)
    validation.device("device", str(device))
    statistics = bound_test_functions(problem, test_fns)
    chunk = run_chunk(problem, batch, chains, chunk)
    memory.require(run_parts(problem, batch=batch, sampling=sampling, steps=steps, chains=chains,
                             every=every, keep_states=keep_states, statistics=len(statistics),
                             chunk=chunk, dtype=start_dtype(x0)), device)
    x = start_points(x0, chains, problem.dim, device)
    recorder = Recorder(x, steps=steps, every=every, keep_states=keep_states,
                        statistics=statistics, diverge_at=diverge_at, chunk=chunk)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        for k in progress_bar(range(steps), desc=f"{rule.name} ensemble", show=progress,
                      leave=False):
            idx = draw_batches(generator, chains, problem.n, batch, sampling)
            for part in chunks(chains, recorder.chunk):
                old = x[part]
                new = old - eta * update_direction(problem, rule.name, old, idx[part], rho=rho,
                                                   micro=micro, lam=lam)
                x[part] = recorder.freeze(k, part, old, new)
            recorder.record(k + 1, x)
    return recorder.result(x, eta)
