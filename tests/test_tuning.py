"""The equal-budget tuning rules of sdesam.experiment.tuning."""

from __future__ import annotations

import math

import pytest

from sdesam.experiment import tuning
from sdesam.validation import InputError


def candidates(*pairs):
    return [tuning.Candidate(value, None, "grid", [score, score]) for value, score in pairs]


def test_check_grid_accepts_steps_up_to_two_and_the_asked_span():
    grid = tuning.geometric_grid(0.005, 2.0, 8)
    assert grid[0] == 0.005 and grid[-1] == 0.64
    assert tuning.check_grid("rho_grid", grid, low=0.005, high=0.5) == grid
    with pytest.raises(InputError, match="rho_grid must reach up to 1"):
        tuning.check_grid("rho_grid", grid, high=1.0)
    with pytest.raises(InputError, match="rho_grid must ascend in steps of at most 2x"):
        tuning.check_grid("rho_grid", [0.01, 0.03])
    with pytest.raises(InputError, match="must ascend"):
        tuning.check_grid("rho_grid", [0.02, 0.01])
    with pytest.raises(InputError, match="positive numbers"):
        tuning.check_grid("rho_grid", [0.0, 0.01])


def test_best_takes_the_mean_over_seeds_skips_unfinished_and_keeps_the_first_on_ties():
    tried = candidates((0.01, 80.0), (0.02, 85.0), (0.04, 85.0))
    tried.append(tuning.Candidate(0.08, None, "grid", [99.0, None]))   # stopped on one seed
    assert tuning.best(tried).value == 0.02
    assert tuning.Candidate(1.0, None, "grid", [80.0, 90.0]).score == 85.0
    assert tuning.best([tuning.Candidate(1.0, None, "grid", [None, None])]) is None


def test_an_edge_choice_extends_the_grid_one_step_beyond_that_edge():
    assert tuning.edge_extension(candidates((0.01, 90.0), (0.02, 85.0))) == 0.005
    assert tuning.edge_extension(candidates((0.01, 80.0), (0.02, 85.0))) == 0.04
    assert tuning.edge_extension(candidates((0.01, 80.0), (0.02, 85.0), (0.04, 82.0))) is None


def test_the_second_stage_refines_around_the_choice_or_tries_the_second_parameter():
    chosen = tuning.Candidate(0.04, None, "grid", [90.0, 90.0])
    low, high = [value for value, _ in tuning.refinement(chosen)]
    assert low == pytest.approx(0.04 / math.sqrt(2), rel=1e-5)
    assert high == pytest.approx(0.04 * math.sqrt(2), rel=1e-5)
    reweighted = tuning.Candidate(0.04, 1.0, "grid", [90.0, 90.0])
    assert tuning.refinement(reweighted, (0.5, 1.0, 2.0)) == [(0.04, 0.5), (0.04, 2.0)]
