"""Control variates for the Monte-Carlo weak errors (sdesam.simulation.control_variates): the
surrogate is the second-order Taylor expansion, a companion equal to the chain gives the exact
moments, the controlled means agree with plain Monte Carlo on a non-affine rule with far smaller
variance, the regression estimator's formula, and refusals."""

import numpy as np
import pytest
import torch

from sdesam.problems import LogisticRegression, Quadratic
from sdesam.simulation import control_variates, ensemble, exact_moments, sde
from sdesam.validation import InputError

TESTS = ["loss", "sq_norm", "coord0", "trace_V"]
X0 = torch.tensor([1.0, -1.0], dtype=torch.float64)


def logistic(n: int = 6) -> LogisticRegression:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    labels = (torch.rand(n, generator=generator, dtype=torch.float64) < 0.5).double()
    return LogisticRegression(features, labels, l2=0.1)


def quadratic(n: int = 4) -> Quadratic:
    generator = torch.Generator().manual_seed(1)
    roots = torch.randn(n, 2, 2, generator=generator, dtype=torch.float64)
    hessians = roots @ roots.transpose(1, 2) / 2 + 0.3 * torch.eye(2, dtype=torch.float64)
    return Quadratic(hessians, torch.randn(n, 2, generator=generator, dtype=torch.float64))


def test_the_surrogate_is_the_second_order_taylor_expansion_of_every_sample():
    problem = logistic()
    point = torch.tensor([0.3, -0.2], dtype=torch.float64)
    surrogate = control_variates.quadratic_surrogate(problem, point)
    torch.testing.assert_close(surrogate.sample_grads(point), problem.sample_grads(point))
    hessians = torch.func.jacrev(problem.sample_grads)(point)
    torch.testing.assert_close(torch.func.jacrev(surrogate.sample_grads)(point), hessians)
    step = torch.tensor([1e-3, -2e-3], dtype=torch.float64)   # losses agree to third order
    gap = (problem.sample_losses(point + step) - problem.sample_losses(point)
           - surrogate.sample_losses(point + step) + surrogate.sample_losses(point))
    assert gap.abs().max() < 1e-8
    # a quadratic problem is its own surrogate
    q = quadratic()
    again = control_variates.quadratic_surrogate(q, point)
    torch.testing.assert_close(again.hessians, q.hessians)
    torch.testing.assert_close(again.centers, q.centers)


def test_the_minimiser_and_the_midpoint():
    problem = logistic()
    minimum = control_variates.full_batch_minimum(problem, X0)
    assert problem.grad(minimum).norm() < 1e-10
    torch.testing.assert_close(control_variates.midpoint(problem, X0), (X0 + minimum) / 2)


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_a_companion_equal_to_the_chain_gives_the_exact_moments_with_zero_variance(sampling):
    problem = quadratic()
    surrogate = control_variates.quadratic_surrogate(problem, X0)
    common = dict(eta=0.1, x0=X0, batch=2, chains=300, seed=5, test_fns=TESTS, sampling=sampling)
    run = control_variates.discrete(problem, "sgd", surrogate, steps=6, **common)
    exact = exact_moments.discrete_moments(problem, "sgd", eta=0.1, rho=None, batch=2, x0=X0,
                                           steps=6, every=1, sampling=sampling, test_fns=TESTS)
    path = control_variates.continuous(problem, "sgd", surrogate, horizon=0.6, dt=0.05, **common)
    linear = exact_moments.linear_sde(problem, "sgd", eta=0.1, rho=None, batch=2, sampling=sampling)
    cell = exact_moments.euler_operator(linear, 0.05)
    euler = exact_moments.moment_path(problem, X0, lambda k: np.linalg.matrix_power(cell, 2 * k),
                                      6, 1, 0.1, TESTS)
    for name in TESTS:
        for controlled, reference in ((run, exact), (path, euler)):
            np.testing.assert_allclose(controlled.moments[name].mean.numpy(),
                                       reference.tests[name], rtol=1e-9, atol=1e-12)
            assert float(controlled.moments[name].var.max()) < 1e-20
            assert float(controlled.plain[name].var[-1]) > 1e-4     # the plain estimate is noisy


@pytest.mark.parametrize("side", ["discrete", "sde"])
def test_controlled_means_agree_with_plain_monte_carlo_on_sam_with_far_less_variance(side):
    problem, chains = logistic(), 4000
    surrogate = control_variates.quadratic_surrogate(problem, control_variates.midpoint(problem, X0))
    common = dict(eta=0.1, rho=0.15, x0=X0, batch=3, test_fns=TESTS)
    if side == "discrete":
        controlled = control_variates.discrete(problem, "sam", surrogate, steps=8, chains=chains,
                                               seed=2, **common)
        plain = ensemble.run(problem, "sam", steps=8, chains=8 * chains, seed=3,
                             keep_states=False, **common)
    else:
        controlled = control_variates.continuous(problem, "sam", surrogate, horizon=0.8,
                                                 chains=chains, seed=2, **common)
        plain = sde.simulate(problem, "sam", horizon=0.8, chains=8 * chains, seed=3,
                             keep_states=False, **common)
    for name in TESTS:
        ours, theirs = controlled.moments[name], plain.moments[name]
        gap = (ours.mean - theirs.mean)[1:]
        stderr = (ours.var[1:] / chains + theirs.var[1:] / (8 * chains)).sqrt()
        assert (gap.abs() < 4.5 * stderr).all(), name
        assert controlled.variance_reduction(name) > 20, name


def test_the_regression_estimator_by_hand():
    generator = np.random.default_rng(0)
    c = generator.normal(size=(2, 500))
    y = 3.0 + 2.0 * c + 0.1 * generator.normal(size=(2, 500))
    exact = [0.05, -0.02]
    moments = control_variates.controlled_moments(torch.tensor(y), torch.tensor(c), exact)
    for r in range(2):
        beta = np.cov(y[r], c[r])[0, 1] / np.var(c[r], ddof=1)
        assert float(moments.mean[r]) == pytest.approx(y[r].mean() - beta * (c[r].mean() - exact[r]))
        residual = y[r] - beta * c[r]
        assert float(moments.var[r]) == pytest.approx(residual.var(ddof=1))
    assert moments.count.tolist() == [500, 500]
    with pytest.raises(InputError, match="records, chains"):
        control_variates.controlled_moments(torch.zeros(2, 5), torch.zeros(2, 4), [0, 0])


def test_refusals_name_what_is_wrong():
    problem = logistic()
    surrogate = control_variates.quadratic_surrogate(problem, X0)
    with pytest.raises(InputError, match=r"point must have shape \[2\]"):
        control_variates.quadratic_surrogate(problem, [0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="draws its perturbation"):
        control_variates.discrete(problem, "rw-sam-draw", surrogate, eta=0.1, rho=0.1, lam=1.0,
                                  steps=2, x0=X0, batch=3, chains=10, seed=0, test_fns=["loss"])
    with pytest.raises(InputError, match="control variates need every chain finite: 10 chain"):
        control_variates.discrete(problem, "sgd", surrogate, eta=1e6, steps=3, x0=X0, batch=3,
                                  chains=10, seed=0, test_fns=["loss"])
