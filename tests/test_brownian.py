"""The fixed-grid Brownian object: reproducible, additive, Gaussian with the right variance."""

import pytest
import torch
from torchsde import BaseBrownian

from sdesam.simulation.brownian import FixedGridBrownian, time_grid


def test_time_grid_accumulates_like_the_solver_clock():
    grid = time_grid(1.0, 0.1)
    assert grid.dtype == torch.float64 and grid.numel() == 11
    clock = grid[0]
    for k in range(10):
        clock = clock + 0.1
        assert clock == grid[k + 1]
    assert abs(float(grid[-1]) - 1.0) < 1e-12


def test_increments_are_fixed_by_the_seed_and_additive():
    grid = time_grid(1.0, 0.25)
    bm = FixedGridBrownian(grid, (4, 3), seed=7)
    assert isinstance(bm, BaseBrownian) and bm.shape == (4, 3)
    again = FixedGridBrownian(grid, (4, 3), seed=7)
    other = FixedGridBrownian(grid, (4, 3), seed=8)
    assert torch.equal(bm(grid[1], grid[2]), again(grid[1], grid[2]))
    assert not torch.equal(bm(grid[1], grid[2]), other(grid[1], grid[2]))
    assert torch.equal(bm(grid[2], grid[3]), bm.increment(2))   # any order, same value
    assert torch.allclose(bm(grid[0], grid[3]), bm.increment(0) + bm.increment(1) + bm.increment(2))
    assert torch.allclose(bm(grid[3]), bm(grid[0], grid[3]))


def test_increments_have_the_variance_of_the_cell():
    grid = time_grid(0.5, 0.125)
    bm = FixedGridBrownian(grid, (200000, 1), seed=0)
    values = bm(grid[1], grid[3])
    assert abs(float(values.mean())) < 4 * (0.25 / 200000) ** 0.5
    assert abs(float(values.var()) - 0.25) < 0.01


@pytest.mark.parametrize("call, match", [
    (lambda bm: bm(0.05, 0.25), "not a point"),
    (lambda bm: bm(0.5, 0.25), "ta <= tb"),
    (lambda bm: bm(0.0, 0.25, return_U=True), "increments only"),
    (lambda bm: FixedGridBrownian(torch.tensor([0.0, 0.0]), (2, 2), 0), "strictly increasing"),
    (lambda bm: time_grid(1.0, 0.3), "whole number"),
])
def test_bad_queries_raise_value_error(call, match):
    bm = FixedGridBrownian(time_grid(1.0, 0.25), (2, 2), seed=0)
    with pytest.raises(ValueError, match=match):
        call(bm)


def test_an_increment_is_the_seeded_standard_normal_times_the_root_of_the_cell():
    """The increments are those of randn(...) * sqrt(dt) from the (seed, k) generator, exactly:
    every path drawn before stays the same."""
    bm = FixedGridBrownian(time_grid(0.03, 0.01), (5, 4), seed=7)
    for k in range(3):
        generator = torch.Generator().manual_seed(7 * 1_000_003 + k)
        expected = torch.randn((5, 4), generator=generator, dtype=torch.float64) * \
            float(bm.times[k + 1] - bm.times[k]) ** 0.5
        assert torch.equal(bm.increment(k), expected)
