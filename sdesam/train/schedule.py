"""Learning-rate schedules as pure functions of the step: nothing to save for an exact resume."""

from __future__ import annotations

import math
from typing import Sequence

from sdesam.validation import InputError

SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")


def lr_factor(step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
              milestones: Sequence[int] = (), gamma: float = 0.2) -> float:
    """The multiplier of the base learning rate at (0-based) ``step`` of ``total_steps``.

    Linear warm-up from 1/warmup_steps to 1 over the first ``warmup_steps`` steps, then
    ``cosine`` (half a cosine from 1 to 0 over the remaining steps), ``step`` (multiplied by
    ``gamma`` at each step count in ``milestones``) or ``constant``.
    """
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    return 1.0
