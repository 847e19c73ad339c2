"""Dynamic loss scaling for float16 steps, unscaled once per optimizer step.

Every backward pass of a step multiplies its loss by the same ``scale``; the perturbation
uses the ascent gradient divided by it, and the descent gradient is unscaled once, just
before the base optimizer's step. A non-finite descent gradient (which a non-finite ascent
gradient always produces, through the perturbed parameters) skips the step and halves the
scale; ``growth_interval`` finite steps in a row double it. Same policy as
``torch.amp.GradScaler``, kept here because a SAM step has two backward passes per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sdesam.validation import InputError


class LossScaler:
    """The loss scale of float16 training (``enabled=False``: a constant scale of 1)."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        """Start at ``init_scale`` (when enabled); see the module docstring for the policy."""
        if init_scale <= 0:
            raise InputError(f"loss_scale must be > 0; got {init_scale!r}")
        self.enabled = enabled
        self.scale = float(init_scale) if enabled else 1.0
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0

    def unscale_(self, params: Iterable[torch.Tensor]) -> bool:
        """Divide the gradients of ``params`` by the scale; return True if any is non-finite."""
        if not self.enabled:
            return False
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return False
        inverse = 1.0 / self.scale
        for g in grads:
            g.mul_(inverse)
        total = torch.nn.utils.get_total_norm(grads)
        return not bool(torch.isfinite(total))

    def update(self, found_inf: bool) -> None:
        """Back off after a non-finite step, grow after ``growth_interval`` finite ones."""
        if not self.enabled:
            return
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """The scale and the count of finite steps since the last change."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
