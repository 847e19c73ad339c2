"""Learning-rate schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sdesam.train.schedule import lr_factor


def test_cosine_goes_from_one_to_zero_through_one_half():
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert lr_factor(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_warmup_is_linear_then_cosine_starts_at_one():
    assert [lr_factor(s, 100, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, warmup_steps=4) == 1.0
    assert lr_factor(52, 100, warmup_steps=4) == pytest.approx(0.5)


def test_step_and_constant_schedules():
    factors = [lr_factor(s, 100, "step", milestones=[30, 60], gamma=0.1) for s in (0, 29, 30, 59, 60, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(77, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor(0, 10, "linear")
