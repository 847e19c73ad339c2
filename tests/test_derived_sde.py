"""The compiled SDE of a derivation: equal to the hand-written SDEs, weakly close to the
discrete rule for a user-defined rule, and its second-order terms are the right functions."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torchsde

from sdesam import algorithms, problems
from sdesam.simulation import compare, ensemble, sde
from sdesam.algorithms import Rule
from sdesam.simulation.brownian import FixedGridBrownian, time_grid
from sdesam.simulation.derived_sde import CompiledMatrix, DerivedSDE, noise_factor, simulate_derivation
from sdesam import layers
from sdesam.symbolic import derive, example_losses, rho as RHO
from sdesam.symbolic.sampling import sample_distribution
from sdesam.validation import InputError

BATCH = 2


def micro_of(rule: Rule) -> int | None:
    """A micro-batch size for rules that have micro-batches (problem size only)."""
    return 1 if rule.micro else None


def random_points(count: int, dim: int, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(count, dim, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def family():
    losses, variables = example_losses(2)
    return losses, variables, problems.from_sympy(losses, variables)


@pytest.fixture
def scaled_usam():
    rule = Rule("scaled-usam", "part", False, False,
                "G = grad f_B(x + rho s(x) * grad f_B(x))", scale=lambda xk: xk**2 + 1)
    with algorithms.registered(rule):
        yield rule


@pytest.mark.parametrize("sampling", algorithms.SAMPLING_SCHEMES)
def test_compiled_first_order_sde_equals_hand_written(family, sampling):
    losses, variables, problem = family
    eta, rho = 0.1, 0.3
    y = random_points(32, 2)
    names = [name for name in layers.rules_for("symbolic") if name in layers.rules_for("sde")]
    assert names
    for name in names:
        rule = algorithms.get_rule(name)
        lam = {"lam": 1.5} if "lam" in rule.keywords else {}
        radius = rho if rule.perturbed else None
        derivation = derive(rule, losses, variables, batch=BATCH, micro=micro_of(rule),
                            sampling=sampling, **lam)
        compiled = DerivedSDE(derivation, eta=eta, rho=radius)
        written = sde.AlgorithmSDE(problem, name, eta=eta, rho=radius, batch=BATCH,
                                   micro=micro_of(rule), sampling=sampling, **lam)
        torch.testing.assert_close(compiled.f(0.0, y), written.f(0.0, y), rtol=0, atol=1e-10,
                                   msg=f"drift of {name}")
        root = written.diffusion(y)
        torch.testing.assert_close(eta * compiled.sigma(y), root @ root.transpose(-1, -2),
                                   rtol=0, atol=1e-10, msg=f"diffusion of {name}")
        factor = compiled.g(0.0, y)
        torch.testing.assert_close(factor @ factor.transpose(-1, -2), root @ root.transpose(-1, -2),
                                   rtol=0, atol=1e-10, msg=f"square root of {name}")


def test_compiler_handles_abs_sign_sqrt_constants_and_zeros():
    x, y, a = sympy.symbols("x y a", real=True)
    matrix = sympy.Matrix([[sympy.Abs(x - y) * sympy.sign(y) + sympy.sqrt(x**2 + y**2 + a), 0],
                           [sympy.Rational(1, 3), a * sympy.sqrt((x - 1) ** 2 + (y + x) ** 2) ** 3]])
    compiled = CompiledMatrix(matrix, [x, y], [a])
    points = random_points(20, 2, seed=3)
    got = compiled(points, 0.7)
    assert got.shape == (20, 2, 2) and got.dtype == torch.float64
    for point, value in zip(points, got):
        exact = matrix.subs({x: float(point[0]), y: float(point[1]), a: 0.7}).evalf(30)
        expected = torch.tensor([[float(e) for e in row] for row in exact.tolist()],
                                dtype=torch.float64)
        torch.testing.assert_close(value, expected, rtol=1e-13, atol=1e-13)
    with pytest.raises(InputError, match="neither variables nor parameters"):
        CompiledMatrix(matrix, [x, y], [])


def test_compiler_polynomial_route_matches_exact_values_at_each_parameter_value():
    """Polynomial entries go through monomials @ coefficients (cached per parameter values)."""
    x, y, a = sympy.symbols("x y a", real=True)
    matrix = sympy.Matrix([[(x - a * y) ** 3 / 7 + sympy.sqrt(a) * x, 0],
                           [sympy.Rational(1, 3), a**2 * (x + 1) * (y - 2) + sympy.Float(0.25) * y]])
    compiled = CompiledMatrix(matrix, [x, y], [a])
    assert compiled._table is not None                          # the polynomial route
    points = random_points(20, 2, seed=4)
    for value in (0.7, 2.0, 0.7):
        got = compiled(points, value)
        assert got.shape == (20, 2, 2) and got.dtype == torch.float64
        for point, entry in zip(points, got):
            exact = matrix.subs({x: float(point[0]), y: float(point[1]), a: value}).evalf(30)
            expected = torch.tensor([[float(e) for e in row] for row in exact.tolist()],
                                    dtype=torch.float64)
            torch.testing.assert_close(entry, expected, rtol=1e-13, atol=1e-13)


def test_noise_factor_is_exact_on_psd_and_clips_indefinite_matrices():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, 3, dtype=torch.float64, generator=generator)
    sigma = a @ a.transpose(-1, -2)
    sigma[4] = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))   # singular PSD
    sigma[5] = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))  # indefinite
    factor, clipped = noise_factor(sigma)
    product = factor @ factor.transpose(-1, -2)
    torch.testing.assert_close(product[:5], sigma[:5], rtol=0, atol=1e-12)
    torch.testing.assert_close(product[5], torch.diag(torch.tensor([2.0, 0.0, 0.5],
                                                                   dtype=torch.float64)))
    assert clipped.tolist() == [False] * 5 + [True]


def test_refuses_generic_derivations_and_keywords_the_rule_does_not_take(family):
    losses, variables, _ = family
    derivation = derive("usam", losses, variables, batch=BATCH)
    with pytest.raises(InputError, match="lam"):
        DerivedSDE(derivation, eta=0.1, rho=0.1, lam=1.0)
    with pytest.raises(InputError, match="eta"):
        DerivedSDE(derivation, eta=0.0, rho=0.1)
    generic = derive("usam", "generic", variables, batch=BATCH)
    with pytest.raises(InputError, match="concrete losses"):
        DerivedSDE(generic, eta=0.1, rho=0.1)
    with pytest.raises(InputError, match="dt must divide eta"):
        simulate_derivation(derivation, eta=0.1, rho=0.1, x0=[0.0, 0.0], horizon=1.0,
                            chains=2, seed=0, dt=0.03)


def test_torchsde_and_the_fast_loop_give_the_same_paths(family):
    losses, variables, _ = family
    derivation = derive("m-usam", losses, variables, batch=BATCH, micro=1)
    eta, rho = 0.1, 0.2
    run = simulate_derivation(derivation, eta=eta, rho=rho, x0=[1.0, -0.5],
                              horizon=0.5, chains=64, seed=5, dt=eta / 2)
    times, path = run.times, run.states
    grid = time_grid(0.5, eta / 2)
    bm = FixedGridBrownian(grid, (64, 2), 5)
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64).expand(64, 2).clone()
    with torch.no_grad():
        reference = torchsde.sdeint(DerivedSDE(derivation, eta=eta, rho=rho), y0, times, bm=bm,
                                    dt=eta / 2, method="euler")
    assert path.shape == (6, 64, 2)
    torch.testing.assert_close(path, reference, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- a user-defined rule
def weak_errors(problem, derivation, rule, *, etas, kappa, batch, x0, horizon, chains, seed):
    """Per eta: max over the test functions x_0 and |x|^2 of |E g(x_T) - E g(X_T)| and the
    largest ratio of Monte-Carlo standard error to that error."""
    errors, ratios = [], []
    for eta in etas:
        rho = kappa * math.sqrt(eta)
        steps = round(horizon / eta)
        discrete = ensemble.run(problem, rule.name, eta=eta, rho=rho, batch=batch, x0=x0,
                                steps=steps, chains=chains, seed=seed).final
        continuous = simulate_derivation(derivation, eta=eta, rho=rho, x0=x0, horizon=horizon,
                                         chains=chains, seed=seed + 1, dt=eta / 4).final
        assert bool(discrete.isfinite().all()) and bool(continuous.isfinite().all())
        gaps = []
        for test_fn in ("coord0", "sq_norm"):
            a = compare.TEST_FUNCTIONS[test_fn](problem, discrete)
            b = compare.TEST_FUNCTIONS[test_fn](problem, continuous)
            stderr = math.sqrt(float(a.var() + b.var()) / chains)
            gaps.append((abs(float(a.mean() - b.mean())), stderr))
        error, stderr = max(gaps)
        errors.append(error)
        ratios.append(stderr / error)
    return errors, ratios


def check_weak_order(scaled_usam, dim, batch, etas, chains):
    losses, variables = example_losses(dim)
    problem = problems.from_sympy(losses, variables)
    derivation = derive(scaled_usam.name, losses, variables, batch=batch)
    assert not derivation.rule.has_closed_form and derivation.rule.scale is not None
    errors, ratios = weak_errors(problem, derivation, scaled_usam, etas=etas, kappa=0.3,
                                 batch=batch, x0=[1.0, -0.5][:dim], horizon=1.0,
                                 chains=chains, seed=11)
    assert max(ratios) < 0.25, (errors, ratios)   # Monte-Carlo error well below the error
    order = compare.fit_order(etas, errors)["order"]
    assert order >= 0.6, (errors, order)


def test_user_rule_sde_has_weak_order_at_least_0_6(scaled_usam):
    check_weak_order(scaled_usam, dim=1, batch=4, etas=[0.1, 0.05, 0.025], chains=20000)


@pytest.mark.slow
def test_user_rule_sde_has_weak_order_at_least_0_6_in_2d(scaled_usam):
    check_weak_order(scaled_usam, dim=2, batch=4, etas=[0.1, 0.05, 0.025], chains=60000)


# ---------------------------------------------------------------------- second-order terms
@pytest.mark.parametrize("rule_filter", [
    pytest.param(lambda r: r.ascent == "part" and not r.normalized and not r.micro
                 and r.scale is None, marks=pytest.mark.slow, id="mini-batch-usam"),
    pytest.param(lambda r: r.micro and not r.normalized, id="micro-batch-usam")])
def test_eta_correction_and_order_rho_diffusion_compile_run_and_are_right(family, rule_filter):
    losses, variables, problem = family
    name = algorithms.rule_names(lambda r: r.name in layers.rules_for("symbolic") and rule_filter(r))[0]
    rule = algorithms.get_rule(name)
    sampling = "without-replacement"
    derivation = derive(rule, losses, variables, batch=BATCH, micro=micro_of(rule),
                        sampling=sampling, order=2)
    assert derivation.diffusion_order == 1
    y = random_points(16, 2, seed=7)
    eta = 0.1

    # at rho = 0 the eta correction (linear in eta) is SGD's -(eta/2) H grad f
    correction = (DerivedSDE(derivation, eta=2 * eta, rho=0.0).f(0.0, y)
                  - DerivedSDE(derivation, eta=eta, rho=0.0).f(0.0, y))
    expected = -eta / 2 * problem.hvp(y, problem.grad(y))
    torch.testing.assert_close(correction, expected, rtol=0, atol=1e-10)

    # the O(rho) diffusion is the rho-derivative at 0 of the exact covariance of G
    index_sets = sample_distribution(problem.n, BATCH, sampling)
    idx = torch.tensor([s for s, _ in index_sets]).unsqueeze(1).expand(-1, y.shape[0], -1)
    probs = torch.tensor([float(p) for _, p in index_sets], dtype=torch.float64)

    def exact_covariance(rho: float) -> torch.Tensor:
        g = ensemble.update_direction(problem, rule, y.expand(len(index_sets), *y.shape), idx,
                                      rho=rho, micro=micro_of(rule) or BATCH, lam=1.0)
        mean = torch.einsum("s,scd->cd", probs, g)
        second = torch.einsum("s,sci,scj->cij", probs, g, g)
        return second - mean.unsqueeze(-1) * mean.unsqueeze(-2)

    h = 1e-5
    slope = (exact_covariance(h) - exact_covariance(-h)) / (2 * h)
    compiled = DerivedSDE(derivation, eta=eta, rho=1.0).sigma(y) - \
        DerivedSDE(derivation, eta=eta, rho=0.0).sigma(y)
    torch.testing.assert_close(compiled, slope, rtol=1e-6, atol=1e-6)
    assert float(compiled.abs().max()) > 1e-3

    run = simulate_derivation(derivation, eta=eta, rho=0.2, x0=[1.0, -0.5], horizon=1.0,
                              chains=256, seed=0, dt=eta / 4)
    times, path = run.times, run.states
    assert path.shape == (11, 256, 2) and bool(path.isfinite().all())
    torch.testing.assert_close(times, torch.arange(11, dtype=torch.float64) * eta)


def random_hessians(generator: torch.Generator) -> torch.Tensor:
    """Four random symmetric positive definite 2 x 2 matrices ``I + A^T A / 10``."""
    a = torch.randn(4, 2, 2, generator=generator, dtype=torch.float64)
    return torch.eye(2, dtype=torch.float64) + a.transpose(-1, -2) @ a / 10


@pytest.mark.parametrize("make", [
    lambda g: problems.LogisticRegression(torch.randn(4, 2, generator=g, dtype=torch.float64),
                                          torch.tensor([0.0, 1.0, 0.0, 1.0]), l2=0.1),
    lambda g: problems.LinearRegression(torch.randn(4, 2, generator=g, dtype=torch.float64),
                                        torch.randn(4, generator=g, dtype=torch.float64)),
    lambda g: problems.Quadratic(random_hessians(g), torch.randn(4, 2, generator=g, dtype=torch.float64)),
], ids=["logistic", "linear", "quadratic"])
def test_derivation_to_simulation_on_random_float_data(make):
    """A built-in problem with random float data: its sympy form keeps the floats as floats
    (exact rationals of them overflowed the compiled code), the derivation verifies, and the
    compiled SDE simulates and has the hand-written SDE's drift."""
    problem = make(torch.Generator().manual_seed(0))
    losses, variables = problem.sympy_form()
    assert any(loss.has(sympy.Float) for loss in losses)
    derivation = derive("usam", losses, variables, batch=BATCH)
    assert derivation.verify() and derivation.verify_diffusion()
    run = simulate_derivation(derivation, eta=0.1, rho=0.1, x0=[0.2, -0.3], horizon=0.5, chains=8,
                              seed=0)
    assert run.final.shape == (8, 2) and bool(torch.isfinite(run.final).all())
    y = random_points(6, 2, seed=3)
    torch.testing.assert_close(DerivedSDE(derivation, eta=0.1, rho=0.1).f(0.0, y),
                               sde.AlgorithmSDE(problem, "usam", eta=0.1, rho=0.1, batch=BATCH).f(0.0, y),
                               rtol=0, atol=1e-12)


def test_compiled_code_takes_rationals_beyond_machine_integers():
    """A derivation on exact rationals of random floats (the products outgrow int64) compiles:
    such rationals reach the torch code as floats."""
    x = sympy.Symbol("x", real=True)
    a = [sympy.nsimplify(v, rational=True) for v in (0.123456789012345, -1.98765432109876, 0.5)]
    derivation = derive("usam", [(a_i * x - 1) ** 2 / 2 + x**4 / 12 for a_i in a], [x], batch=2)
    assert max(abs(r.q) for e in derivation.drift for r in e.atoms(sympy.Rational)) > 2**63
    drift = DerivedSDE(derivation, eta=0.1, rho=0.2).f(0.0, torch.tensor([[0.3]], dtype=torch.float64))
    expected = float(derivation.drift[0].subs({x: 0.3, RHO: 0.2}).evalf())
    assert drift.item() == pytest.approx(expected, rel=1e-12)
