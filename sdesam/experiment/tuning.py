"""Equal-budget tuning of one hyper-parameter on a geometric grid.

Every method of a comparison is tuned by the same procedure, so that none wins by having been
searched harder (a tuned regulariser against an untuned baseline, or a grid that happens to
hold one method's optimum but not another's):

1. a geometric grid of the method's parameter (ascending, steps of at most
   :data:`MAX_GRID_STEP`), each candidate scored by its validation accuracy averaged over the
   tuning seeds (a candidate stopped or diverged on any seed has no score);
2. when the best candidate sits on an edge of what was tried, one more step beyond that edge,
   repeated at most ``max_extensions`` times (each extension is recorded: a choice still on
   the edge afterwards says the range is too narrow);
3. a second stage of the same size for every method around the choice: the parameter at
   ``REFINEMENT`` times and 1/``REFINEMENT`` times the choice (a finer grid where it matters),
   or, for a method with a second parameter (RW-SAM's lam), that parameter's alternatives at
   the chosen value.

The choice is the best scored candidate of all stages, the first in the order tried on ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..validation import InputError

MAX_GRID_STEP = 2.0
"""The largest ratio between neighbouring grid values."""

REFINEMENT = math.sqrt(2.0)
"""The second stage's factor around the choice: half a grid step either side."""


def check_grid(name: str, grid: Sequence[float], *, low: float | None = None,
               high: float | None = None) -> list[float]:
    """``grid`` as a list after checking it is ascending, positive, with neighbouring values
    at most :data:`MAX_GRID_STEP` apart and, when given, reaching down to ``low`` and up to
    ``high``; an :class:`InputError` naming ``name`` otherwise."""
    values = [float(v) for v in grid]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise InputError(f"{name} must be a non-empty list of positive numbers; got {list(grid)}")
    steps = [b / a for a, b in zip(values, values[1:])]
    if any(step <= 1 or step > MAX_GRID_STEP * (1 + 1e-9) for step in steps):
        raise InputError(f"{name} must ascend in steps of at most {MAX_GRID_STEP:g}x; got {values}")
    if low is not None and values[0] > low * (1 + 1e-9):
        raise InputError(f"{name} must reach down to {low:g}; got {values}")
    if high is not None and values[-1] < high * (1 - 1e-9):
        raise InputError(f"{name} must reach up to {high:g}; got {values}")
    return values


def geometric_grid(low: float, factor: float, count: int) -> list[float]:
    """``count`` values ``low * factor**k`` (rounded to 6 significant digits, so run names stay
    readable)."""
    return [float(f"{low * factor ** k:.6g}") for k in range(count)]


@dataclass
class Candidate:
    """One setting tried: the tuned ``value``, the ``second`` parameter (None when the method
    has none), the ``stage`` it came from (grid, extension, refinement) and its validation
    scores per tuning seed (None where the run was stopped at chance or diverged)."""

    value: float
    second: float | None
    stage: str
    scores: list[float | None]

    @property
    def score(self) -> float | None:
        """The mean score over the tuning seeds; None unless every seed finished."""
        if not self.scores or any(s is None for s in self.scores):
            return None
        return sum(self.scores) / len(self.scores)  # type: ignore[arg-type]


def best(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate with the highest score (the first tried on ties); None when none finished."""
    chosen: Candidate | None = None
    for candidate in candidates:
        if candidate.score is not None and (chosen is None or candidate.score > chosen.score):
            chosen = candidate
    return chosen


def edge_extension(candidates: Sequence[Candidate], factor: float = MAX_GRID_STEP) -> float | None:
    """The next value beyond the edge of the tried values (of the first-stage parameter) that
    the best candidate sits on: its value / ``factor`` at the bottom, * ``factor`` at the top;
    None when it is inside or none finished."""
    chosen = best(candidates)
    if chosen is None:
        return None
    values = [c.value for c in candidates]
    if chosen.value <= min(values):
        return float(f"{chosen.value / factor:.6g}")
    if chosen.value >= max(values):
        return float(f"{chosen.value * factor:.6g}")
    return None


def refinement(chosen: Candidate, seconds: Sequence[float] = ()) -> list[tuple[float, float | None]]:
    """The second stage around ``chosen``: (value, second) pairs. With ``seconds`` (the second
    parameter's alternatives, e.g. lam multiples) those at the chosen value; otherwise the
    value / and * :data:`REFINEMENT`."""
    if seconds:
        return [(chosen.value, s) for s in seconds if s != chosen.second]
    return [(float(f"{chosen.value / REFINEMENT:.6g}"), chosen.second),
            (float(f"{chosen.value * REFINEMENT:.6g}"), chosen.second)]
