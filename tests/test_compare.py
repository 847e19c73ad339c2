"""Weak-error statistics against hand computation, order fits on known power laws, and the
chain counts every record carries."""

import math

import numpy as np

import pytest
import torch

from sdesam.simulation import compare
from sdesam.simulation.chains import Moments
from sdesam.problems import Quadratic


def moments_of(values):
    """Moments of a [records, chains] table, as one run would record them."""
    return Moments(values.mean(dim=1), values.var(dim=1), torch.full((values.shape[0],), values.shape[1]))


def test_pooled_moments_equal_those_of_all_chains_at_once():
    values = torch.tensor([[1.0, 2.0, 4.0, 7.0, 3.0], [0.0, 1.0, 1.0, 2.0, 5.0]], dtype=torch.float64)
    pooled = Moments.pooled([moments_of(values[:, :2]), moments_of(values[:, 2:])])
    assert torch.allclose(pooled.mean, values.mean(dim=1))
    assert torch.allclose(pooled.var, values.var(dim=1))
    assert pooled.count.tolist() == [5, 5]


def test_weak_error_takes_the_max_gap_the_gap_at_the_horizon_and_their_standard_errors():
    a = Moments(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 4.0, 1.0]), torch.tensor([100] * 3))
    b = Moments(torch.tensor([0.0, 1.5, 2.1]), torch.tensor([1.0, 5.0, 1.0]), torch.tensor([25, 25, 20]))
    result = compare.weak_error(a, b)
    assert result["argmax_record"] == 1 and result["weak_error"] == pytest.approx(0.5)
    assert result["weak_error_stderr"] == pytest.approx(math.sqrt(4 / 100 + 5 / 25))
    assert result["weak_error_T"] == pytest.approx(0.1) and result["error_T"] == pytest.approx(-0.1)
    assert result["weak_error_T_stderr"] == pytest.approx(math.sqrt(1 / 100 + 1 / 20))


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


def test_fit_order_with_standard_errors_gives_the_monte_carlo_interval():
    etas = [0.4, 0.2, 0.1, 0.05]
    errors = [3 * e for e in etas]
    stderrs = [0.1 * e for e in errors]           # every point 10 standard errors above zero
    fit = compare.fit_order(etas, errors, stderrs=stderrs)
    logs = np.log(etas)
    weights = (logs - logs.mean()) / ((logs - logs.mean()) ** 2).sum()
    half = 1.959964 * math.sqrt(((weights * 0.1) ** 2).sum())
    assert fit["order"] == pytest.approx(1.0) and fit["interval"] == "monte-carlo"
    assert (fit["ci_low"], fit["ci_high"]) == pytest.approx((1 - half, 1 + half), rel=1e-5)
    assert fit["min_signal"] == pytest.approx(10.0)
    # the interval is the noise's: it covers the true slope about 95% of the time
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        noisy = [e + s * rng.normal() for e, s in zip(errors, stderrs)]
        trial = compare.fit_order(etas, noisy, stderrs=stderrs)
        covered += trial["ci_low"] <= 1.0 <= trial["ci_high"]
    assert 0.90 <= covered / 400 <= 0.99
    two = compare.fit_order(etas[:2], errors[:2], stderrs=stderrs[:2])    # a local order
    assert two["order"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        compare.fit_order(etas[:1], errors[:1], stderrs=stderrs[:1])


def ou_problem():
    return Quadratic(torch.eye(2, dtype=torch.float64).expand(4, 2, 2),
                     torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64))


def test_compare_algorithm_on_sgd_gives_small_errors_with_error_bars_and_counts():
    """At rho = 0 the SDE is SGD's; on an OU problem (exact linear mean) Euler with dt = eta is
    exact in the mean, E x_k = 2 (1 - eta)^k for both, so the gap is Monte-Carlo noise."""
    rows = compare.compare_algorithm(ou_problem(), "sgd", eta=0.1, rho=0.0, batch=2, x0=[2.0, 2.0],
                                     horizon=1.0, chains=2000, chunk=700, seed=0, dt=0.1,
                                     test_fns=["coord0", "sq_norm"])
    assert [(r["test_fn"], r["variant"]) for r in rows] == [("coord0", "full"), ("sq_norm", "full")]
    coord = rows[0]
    assert coord["weak_error"] < 5 * coord["weak_error_stderr"] + 1e-12
    assert coord["weak_error_T"] < 5 * coord["weak_error_T_stderr"] + 1e-12
    assert 0 < coord["weak_error_stderr"] < 0.05
    assert coord["chains"] == 2000 and coord["diverged"] == 0 and coord["micro"] is None
    assert 0 <= coord["argmax_step"] <= 10
    with pytest.raises(ValueError, match="test_fns"):
        compare.compare_algorithm(ou_problem(), "sgd", eta=0.1, rho=0.0, batch=2, x0=[0.0, 0.0],
                                  horizon=1.0, chains=10, seed=0, test_fns=["energy"])


def test_compare_algorithm_hands_drift_batches_to_the_sde():
    common = dict(eta=0.1, rho=0.1, batch=2, x0=[1.0, 1.0], horizon=0.2, chains=50, seed=0,
                  test_fns=["coord0"], variants=["full"])
    exact = compare.compare_algorithm(ou_problem(), "sam", drift_batches="exact", **common)
    drawn = compare.compare_algorithm(ou_problem(), "sam", drift_batches=1, **common)
    assert exact[0]["weak_error_T"] != drawn[0]["weak_error_T"]
    with pytest.raises(ValueError, match="drift_batches"):
        compare.compare_algorithm(ou_problem(), "sam", drift_batches="some", **common)


def test_diverging_chains_are_counted_in_the_records():
    """f_i = -|x - c_i|^2/2: chains started far out blow past diverge_at... here the default
    1e8 at x0 = 1e7 within 8 steps of eta = 0.5 (x grows by 1.5 a step)."""
    problem = Quadratic(-torch.eye(1, dtype=torch.float64).expand(2, 1, 1),
                        torch.tensor([[0.5], [-0.5]], dtype=torch.float64))
    x0 = torch.tensor([[1e7]] * 3 + [[0.1]] * 5, dtype=torch.float64)
    rows = compare.compare_algorithm(problem, "sgd", eta=0.5, rho=0.0, batch=1, x0=x0, horizon=4.0,
                                     chains=8, chunk=8, seed=0, dt=0.5, test_fns=["coord0"])
    assert rows[0]["discrete_diverged"] == 3 and rows[0]["sde_diverged"] == 3
    assert rows[0]["diverged"] == 6 and math.isfinite(rows[0]["weak_error"])
