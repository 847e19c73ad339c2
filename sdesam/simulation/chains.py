"""What a many-chain simulation keeps, and how it reports chains that blew up.

The discrete ensemble (:mod:`sdesam.simulation.ensemble`) and the SDE integrator (:mod:`sdesam.simulation.sde`) share
this bookkeeping, so both layers behave the same way:

* **Divergence.** After every update each chain is checked: a chain whose state holds a NaN or
  an infinity, or whose norm exceeds ``diverge_at`` (default :data:`DIVERGE_AT` = 1e8), has
  diverged. It is frozen at its last state before the failure, is never updated again, and is
  left out of every statistic from then on; the run returns the diverged mask, the step of
  each failure and the count (:class:`ChainRun`).
* **What is kept.** A run records at steps ``0, every, 2 every, ...`` and at its last step.
  At those steps it keeps the states ``[records, chains, d]`` only when asked
  (``keep_states``), and the mean and variance over the live chains of each named test
  function (:data:`TEST_FUNCTIONS`) when asked; the end state is always returned. A comparison
  of end-time moments of 1e5 chains thus never holds a path.
* **Cache-sized chunks.** Work on ``[chains, N, d]`` temporaries is done a chunk of chains at a
  time (:func:`chunk_size`), so no temporary outgrows :data:`CHUNK_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import torch

from .. import validation
from ..problems.base import Problem

DIVERGE_AT = 1e8
"""Default norm beyond which a chain counts as diverged (besides any NaN / infinity)."""

CHUNK_BYTES = 2 * 2**20
"""Default size of the per-chunk temporaries (bytes): a few MB keeps them in cache and far
below the ~32 MB past which the allocator maps fresh pages (page faults) at every step."""

TestFunction = Callable[[Problem, torch.Tensor], torch.Tensor]

TEST_FUNCTIONS: dict[str, TestFunction] = {
    "loss": lambda problem, x: problem.loss(x),
    "sq_norm": lambda problem, x: x.square().sum(dim=-1),
    "coord0": lambda problem, x: x[..., 0],
    "trace_V": lambda problem, x: problem.trace_V(x),
}
"""Test functions g(x) whose Monte-Carlo moments a run can accumulate, by name."""


def check_test_functions(names: Iterable[str], *, allow_empty: bool = False) -> list[str]:
    """``names`` as a list if each names a test function of :data:`TEST_FUNCTIONS`."""
    names = list(names)
    unknown = [name for name in names if name not in TEST_FUNCTIONS]
    if unknown or (not names and not allow_empty):
        raise validation.InputError(f"test_fns must be a {'' if allow_empty else 'non-empty '}list "
                                    f"drawn from {', '.join(TEST_FUNCTIONS)}; got {names!r}")
    return names


def bound_test_functions(problem: Problem, names: Iterable[str]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The named test functions of ``problem`` as maps ``x [..., d] -> [...]``."""
    return {name: (lambda x, fn=TEST_FUNCTIONS[name]: fn(problem, x))
            for name in check_test_functions(names, allow_empty=True)}


def chunk_size(chains: int, elements_per_chain: int, element_size: int = 8,
               budget: int = CHUNK_BYTES) -> int:
    """How many chains to process at once so that a temporary of ``elements_per_chain``
    elements per chain stays within ``budget`` bytes (at least one chain)."""
    return max(1, min(chains, budget // max(1, elements_per_chain * element_size)))


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(count)``."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def is_diverged(x: torch.Tensor, diverge_at: float) -> torch.Tensor:
    """``[...]`` booleans: a state ``x [..., d]`` with a non-finite entry or norm > ``diverge_at``."""
    return ~(x.norm(dim=-1) <= diverge_at)     # a NaN norm fails the comparison too


def any_diverged(x: torch.Tensor, diverge_at: float) -> bool:
    """Whether any state of ``x [chains, d]`` is diverged (:func:`is_diverged`): one reduction
    and no mask, the cheap check of a step where every chain is expected to stay alive."""
    return x.shape[0] > 0 and not bool(x.norm(dim=-1).amax() <= diverge_at)  # NaN fails too


def recorded_steps(steps: int, every: int | None) -> list[int]:
    """The steps a run of ``steps`` steps records: 0, every, 2 every, ... and the last one
    (``every=None``: the start and the end only)."""
    if every is None:
        return [0, steps]
    validation.positive_int("every", every)
    kept = list(range(0, steps + 1, every))
    return kept if kept[-1] == steps else kept + [steps]


def record_count(steps: int, every: int | None) -> int:
    """``len(recorded_steps(steps, every))``, without building the list."""
    if every is None:
        return 2
    validation.positive_int("every", every)
    return steps // every + 1 + (1 if steps % every else 0)


@dataclass
class Moments:
    """Mean and variance of one test function at each recorded step, over ``count [R]`` live
    chains (the chains that had not diverged by that step)."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    @staticmethod
    def pooled(parts: list["Moments"]) -> "Moments":
        """The moments of the union of disjoint sets of chains (pairwise-exact pooling)."""
        count = sum(part.count for part in parts).to(torch.float64)
        safe = count.clamp_min(1)
        mean = sum(part.mean.nan_to_num() * part.count for part in parts) / safe
        # sum of squared deviations: within parts plus between parts
        squares = sum(part.var.nan_to_num() * (part.count - 1).clamp_min(0)
                      + part.count * (part.mean.nan_to_num() - mean).square() for part in parts)
        var = squares / (count - 1).clamp_min(1)
        empty = count == 0
        return Moments(mean.masked_fill(empty, float("nan")), var.masked_fill(empty, float("nan")),
                       count.long())


@dataclass
class ChainRun:
    """What a simulation of many chains returns.

    ``steps [R]`` and ``times [R]`` (float64, ``k * eta``) of the recorded steps; ``final
    [chains, d]`` the end state (a diverged chain holds its last state before the failure);
    ``states [R, chains, d]`` when asked for (else None); ``moments`` the running statistics
    asked for; ``diverged [chains]`` and ``diverged_step [chains]`` (-1: never) per chain.
    """

    steps: torch.Tensor
    times: torch.Tensor
    final: torch.Tensor
    diverged: torch.Tensor
    diverged_step: torch.Tensor
    states: torch.Tensor | None = None
    moments: dict[str, Moments] = field(default_factory=dict)

    @property
    def chains(self) -> int:
        """Number of chains simulated."""
        return int(self.final.shape[0])

    @property
    def diverged_count(self) -> int:
        """Number of chains that diverged."""
        return int(self.diverged.sum())


class Recorder:
    """Collects what a run keeps (states, moments of test functions) at its recorded steps and
    tracks divergence; :meth:`update` applies one step with freezing."""

    def __init__(self, x0: torch.Tensor, *, steps: int, every: int | None, keep_states: bool,
                 statistics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                 diverge_at: float, chunk: int) -> None:
        validation.finite_tensor("x0", x0)
        self.diverge_at = validation.positive_number("diverge_at", diverge_at)
        if bool(is_diverged(x0, self.diverge_at).any()):
            raise validation.InputError(f"x0 must lie within diverge_at={self.diverge_at:g} in norm; "
                                        f"got a start of norm {float(x0.norm(dim=-1).max()):g}")
        self.chunk = validation.positive_int("chunk", chunk)
        self.steps = recorded_steps(steps, every)
        self._index = {k: r for r, k in enumerate(self.steps)}
        chains, dim = x0.shape
        self.alive = torch.ones(chains, dtype=torch.bool, device=x0.device)
        self.all_alive = True
        self.diverged_step = torch.full((chains,), -1, dtype=torch.long, device=x0.device)
        self.states = (torch.empty(len(self.steps), chains, dim, dtype=x0.dtype, device=x0.device)
                       if keep_states else None)
        self.statistics = dict(statistics)
        shape = (len(self.steps),)
        self._moments = {name: (torch.full(shape, float("nan"), dtype=torch.float64),
                                torch.full(shape, float("nan"), dtype=torch.float64),
                                torch.zeros(shape, dtype=torch.long)) for name in self.statistics}
        self.record(0, x0)

    def record(self, k: int, x: torch.Tensor) -> None:
        """Keep what is asked for at step ``k`` if it is a recorded step."""
        r = self._index.get(k)
        if r is None:
            return
        if self.states is not None:
            self.states[r] = x
        if not self.statistics:
            return
        live = x[self.alive]
        for name, fn in self.statistics.items():
            values = torch.cat([fn(live[part]).to(torch.float64)
                                for part in chunks(live.shape[0], self.chunk)]) \
                if live.shape[0] else torch.zeros(0, dtype=torch.float64, device=x.device)
            mean, var, count = self._moments[name]
            count[r] = values.numel()
            if values.numel():
                mean[r] = values.mean().cpu()
                var[r] = values.var(correction=1).cpu() if values.numel() > 1 else 0.0

    def freeze(self, k: int, part: slice, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The states of chains ``part`` after step ``k`` (0-based): ``new`` where the chain is
        alive and did not just diverge, ``old`` otherwise (diverged chains stay frozen)."""
        if self.all_alive and not any_diverged(new, self.diverge_at):
            return new
        alive = self.alive[part]
        failed = alive & is_diverged(new, self.diverge_at)
        if bool(failed.any()):
            self.diverged_step[part][failed] = k + 1
            alive &= ~failed
            self.all_alive = False
        return new if self.all_alive else torch.where(alive.unsqueeze(-1), new, old)

    def result(self, final: torch.Tensor, eta: float, times: torch.Tensor | None = None) -> ChainRun:
        """The :class:`ChainRun` of this run (``times`` default: step times ``k * eta``)."""
        steps = torch.tensor(self.steps, dtype=torch.long)
        if times is None:
            times = steps.to(torch.float64) * eta
        moments = {name: Moments(*values) for name, values in self._moments.items()}
        return ChainRun(steps=steps, times=times, final=final, diverged=~self.alive,
                        diverged_step=self.diverged_step, states=self.states, moments=moments)
