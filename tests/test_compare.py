"""Weak-error statistics against hand computation, and order fits on known power laws."""

import math

import pytest
import torch

from sdesam import compare
from sdesam.problems import Quadratic


def test_path_moments_match_hand_computed_means_and_variances():
    problem = Quadratic(torch.eye(1, dtype=torch.float64).expand(2, 1, 1), torch.zeros(2, 1))
    values = torch.tensor([[1.0, 2.0, 4.0, 7.0], [0.0, 1.0, 1.0, 2.0]], dtype=torch.float64)

    def sample(seed, size):  # paths [2 steps, size chains, 1]; chunks cut the chains
        start = sample.offset
        sample.offset += size
        return values[:, start:start + size, None]
    sample.offset = 0
    moments = compare.path_moments(problem, sample, chains=4, chunk=3, test_fns=["coord0", "sq_norm"], seed=0)
    assert torch.allclose(moments["coord0"].mean, torch.tensor([3.5, 1.0], dtype=torch.float64))
    assert torch.allclose(moments["coord0"].var, torch.tensor([7.0, 2.0 / 3.0], dtype=torch.float64))
    assert torch.allclose(moments["sq_norm"].mean, torch.tensor([70 / 4, 6 / 4], dtype=torch.float64))


def test_weak_error_takes_the_max_gap_and_its_standard_error():
    a = compare.Moments(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 4.0, 1.0]), 100)
    b = compare.Moments(torch.tensor([0.0, 1.5, 2.1]), torch.tensor([1.0, 5.0, 1.0]), 25)
    error, stderr, step = compare.weak_error(a, b)
    assert step == 1 and error == pytest.approx(0.5)
    assert stderr == pytest.approx(math.sqrt(4 / 100 + 5 / 25))


def test_fit_order_recovers_a_power_law_and_its_interval_covers_it():
    etas = [0.2, 0.1, 0.05, 0.025]
    exact = compare.fit_order(etas, [3 * e**1.5 for e in etas])
    assert exact["order"] == pytest.approx(1.5) and exact["ci_low"] == pytest.approx(1.5)
    noisy = compare.fit_order(etas, [3 * e * (1.1, 0.92, 1.05, 0.97)[i] for i, e in enumerate(etas)])
    assert noisy["ci_low"] < 1.0 < noisy["ci_high"] and noisy["ci_high"] - noisy["ci_low"] > 0.01
    with pytest.raises(ValueError, match="at least 3"):
        compare.fit_order([0.1, 0.2], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        compare.fit_order([0.1, 0.2, 0.3], [1.0, 0.0, 2.0])


def test_compare_algorithm_on_sgd_gives_small_errors_with_error_bars():
    """At rho = 0 both SDEs are the SGD SDE; on an OU problem (exact linear mean) the weak
    error of the mean is O(eta), here well below the starting distance."""
    problem = Quadratic(torch.eye(2, dtype=torch.float64).expand(4, 2, 2),
                        torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64))
    rows = compare.compare_algorithm(problem, "sgd", eta=0.1, rho=0.0, batch=2, x0=[2.0, 2.0],
                                     horizon=1.0, chains=2000, seed=0, test_fns=["coord0", "sq_norm"])
    assert [r["test_fn"] for r in rows] == ["coord0", "sq_norm"]
    coord = rows[0]
    # Euler with dt = eta is exact in the mean here: E x_k = 2 (1 - eta)^k for both
    assert coord["weak_error"] < 5 * coord["stderr"] + 1e-12
    assert coord["weak_error_without_variance_term"] < 5 * coord["stderr_without_variance_term"]
    assert 0 < coord["stderr"] < 0.05
    with pytest.raises(ValueError, match="test_fns"):
        compare.compare_algorithm(problem, "sgd", eta=0.1, rho=0.0, batch=2, x0=[0.0, 0.0],
                                  horizon=1.0, chains=10, seed=0, test_fns=["energy"])
