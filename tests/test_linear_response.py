"""The predicted sqrt(eta) coefficient for any rule (sdesam.simulation.linear_response): on the
affine rules it is the exact moment-generator one; elsewhere it converges in its step and rho,
and it is zero for rules without a noise-induced term."""

from __future__ import annotations

import pytest
import torch

from sdesam.problems import LogisticRegression, Quadratic
from sdesam.simulation import exact_expansion, linear_response
from sdesam.validation import InputError

TESTS = ("loss", "sq_norm", "coord0", "trace_V")


def quadratic() -> Quadratic:
    generator = torch.Generator().manual_seed(0)
    roots = torch.randn(4, 2, 2, generator=generator, dtype=torch.float64)
    hessians = roots @ roots.transpose(1, 2) / 2 + 0.3 * torch.eye(2, dtype=torch.float64)
    return Quadratic(hessians, torch.randn(4, 2, generator=generator, dtype=torch.float64))


def logistic() -> LogisticRegression:
    generator = torch.Generator().manual_seed(0)
    return LogisticRegression(torch.randn(8, 2, generator=generator, dtype=torch.float64),
                              (torch.rand(8, generator=generator) < 0.5).double(), l2=0.1)


@pytest.mark.parametrize("algorithm, micro, sampling", [
    ("usam", None, "with-replacement"), ("m-usam", 1, "with-replacement"),
    ("m-usam", 1, "without-replacement"), ("usam", None, "without-replacement")])
def test_affine_rules_give_the_exact_frechet_derivative(algorithm, micro, sampling):
    """Two independent computations of the same number: Runge-Kutta flows differenced in rho
    against the Frechet derivative of the moment generator's exponential."""
    common = dict(kappa=0.5, batch=2, micro=micro, x0=[1.0, -1.0], horizon=1.0,
                  sampling=sampling, test_fns=TESTS)
    exact = exact_expansion.predicted_sqrt_coefficient(quadratic(), algorithm, **common)
    flows = linear_response.predicted_sqrt_coefficient(quadratic(), algorithm, **common)
    assert any(abs(value) > 1e-3 for value in exact.values())
    for name in TESTS:
        assert flows[name] == pytest.approx(exact[name], rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("algorithm, options", [("sam", {}), ("m-sam", {"micro": 2}),
                                                ("rw-sam", {"lam": 4.0}), ("usam", {})])
def test_non_affine_rules_converge_in_the_step_and_in_rho(algorithm, options):
    common = dict(kappa=0.5, batch=4, x0=[1.0, -1.0], horizon=1.6, test_fns=TESTS, **options)
    coarse = linear_response.predicted_sqrt_coefficient(logistic(), algorithm, **common)
    fine = linear_response.predicted_sqrt_coefficient(logistic(), algorithm, dt=0.005, rho=5e-5,
                                                      **common)
    assert abs(coarse["loss"]) > 1e-4                     # the term matters at this start
    for name in TESTS:
        assert coarse[name] == pytest.approx(fine[name], rel=1e-6, abs=1e-10), name


def test_rules_without_the_term_predict_zero_and_bad_input_is_refused():
    common = dict(kappa=0.5, batch=4, x0=[1.0, -1.0], horizon=1.0)
    for algorithm in ("sgd", "n-usam", "n-sam"):
        assert set(linear_response.predicted_sqrt_coefficient(
            logistic(), algorithm, **common).values()) == {0.0}
    with pytest.raises(InputError, match="dt must be"):
        linear_response.predicted_sqrt_coefficient(logistic(), "sam", dt=0.0, **common)
    with pytest.raises(InputError, match="test"):
        linear_response.predicted_sqrt_coefficient(logistic(), "sam", test_fns=("norm",), **common)
