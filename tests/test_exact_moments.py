"""Exact moments of the affine rules and their SDEs (sdesam.simulation.exact_moments and
exact_expansion): against the ensemble and the SDE simulation within Monte-Carlo error, against
closed forms, at rho = 0, refusals, and the sqrt(eta) term of the ablated SDE."""

import math

import numpy as np
import pytest
import torch

from sdesam import layers
from sdesam.algorithms import Rule, get_rule, registered, rule_names, sampling_factor
from sdesam.implicit import enumerate_batches
from sdesam.problems import LogisticRegression, Quadratic
from sdesam.simulation import ensemble, exact_expansion, exact_moments, sde
from sdesam.simulation.exact_moments import NotAffineError

SCHEMES = ("with-replacement", "without-replacement")
AFFINE_RUNS = [("sgd", None), ("n-usam", None), ("usam", None), ("m-usam", 1)]
X0 = [1.0, -1.0]


def quadratic(seed: int = 0, n: int = 4, dim: int = 2) -> Quadratic:
    """N per-sample quadratics with distinct Hessians (so tr V varies with x)."""
    generator = torch.Generator().manual_seed(seed)
    roots = torch.randn(n, dim, dim, generator=generator, dtype=torch.float64)
    hessians = roots @ roots.transpose(1, 2) / 2 + 0.3 * torch.eye(dim, dtype=torch.float64)
    return Quadratic(hessians, torch.randn(n, dim, generator=generator, dtype=torch.float64))


def mc_moments(states: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample mean, second moment E x x^T and their standard errors of ``states [chains, d]``."""
    count, dim = states.shape
    outer = (states[:, :, None] * states[:, None, :]).reshape(count, -1)
    return (states.mean(0).numpy(), outer.mean(0).reshape(dim, dim).numpy(),
            (states.std(0) / count**0.5).numpy(), (outer.std(0) / count**0.5).reshape(dim, dim).numpy())


@pytest.mark.parametrize("sampling", SCHEMES)
@pytest.mark.parametrize("rule, micro", AFFINE_RUNS)
def test_step_maps_reproduce_the_ensemble_step_on_every_batch(rule, micro, sampling):
    problem = quadratic()
    rho = 0.3 if get_rule(rule).perturbed else None
    maps = exact_moments.step_maps(problem, rule, eta=0.1, rho=rho, batch=2, micro=micro,
                                   sampling=sampling)
    idx = enumerate_batches(problem.n, 2, sampling).idx
    assert maps.prob.sum() == pytest.approx(1.0) and len(maps.prob) == len(idx)
    x = torch.randn(len(idx), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stepped = ensemble.step(problem, rule, x, idx, eta=0.1, rho=rho, micro=micro).numpy()
    affine = np.einsum("sij,sj->si", maps.matrices, x.numpy()) + maps.offsets
    np.testing.assert_allclose(affine, stepped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampling", SCHEMES)
@pytest.mark.parametrize("rule, micro", [("usam", None), ("m-usam", 1)])
def test_discrete_recursion_equals_the_monte_carlo_ensemble(rule, micro, sampling):
    problem, chains = quadratic(), 10000
    kwargs = dict(eta=0.1, rho=0.2, batch=2, micro=micro, x0=X0, steps=8, sampling=sampling)
    run = ensemble.run(problem, rule, chains=chains, seed=1, every=None, **kwargs)
    exact = exact_moments.discrete_moments(problem, rule, **kwargs)
    mean, second, mean_se, second_se = mc_moments(run.states[-1])
    assert (np.abs(mean - exact.mean[-1]) < 4.5 * mean_se).all()
    assert (np.abs(second - exact.second[-1]) < 4.5 * second_se).all()
    assert exact.tests["sq_norm"][-1] == pytest.approx(np.trace(exact.second[-1]))


@pytest.mark.parametrize("variant", ["full", "without_noise_term"])
@pytest.mark.parametrize("sampling", SCHEMES)
def test_linear_sde_is_the_package_sde_and_the_m_usam_formula(sampling, variant):
    """Drift -grad(f + rho/2 |grad f|^2 + c(m) rho/2 tr V) (no tr V part without the term),
    diffusion eta c(B) V, at random points, against the package's drift and by hand."""
    problem, eta, rho, micro = quadratic(), 0.05, 0.3, 1
    lin = exact_moments.linear_sde(problem, "m-usam", eta=eta, rho=rho, batch=2, micro=micro,
                                   sampling=sampling, variant=variant)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    package = sde.AlgorithmSDE(problem, "m-usam", eta=eta, rho=rho, batch=2, micro=micro,
                               sampling=sampling,
                               drop_terms=("trace_V",) if variant != "full" else ())
    drift = x.numpy() @ lin.drift_matrix.T + lin.drift_offset
    np.testing.assert_allclose(drift, package.f(None, x).numpy(), atol=1e-12)
    grads = problem.sample_grads(x)
    mean = grads.mean(1)
    hessians, n = problem.hessians, problem.n
    c = float(sampling_factor(micro, n, sampling)) if variant == "full" else 0.0
    by_hand = -(mean + rho * mean @ problem.mean_hessian()
                + c * rho / n * torch.einsum("nij,cnj->ci", hessians, grads - mean[:, None]))
    np.testing.assert_allclose(drift, by_hand.numpy(), atol=1e-12)
    columns = np.einsum("nij,cj->cin", lin.noise_matrices, x.numpy()) + lin.noise_offsets.T
    covariance = np.einsum("cin,cjn->cij", columns, columns)
    expected = eta * float(sampling_factor(2, n, sampling)) * problem.noise_covariance(x).numpy()
    np.testing.assert_allclose(covariance, expected, atol=1e-12)


@pytest.mark.parametrize("sampling", SCHEMES)
def test_sde_moments_equal_the_monte_carlo_sde(sampling):
    """The simulated SDE equals the exact moments of its Euler scheme within standard errors;
    that scheme converges to the exact SDE moments at order 1 in dt; and at small dt the
    simulation equals the exact SDE moments within standard errors."""
    problem, chains = quadratic(), 6000
    kwargs = dict(eta=0.1, rho=0.2, batch=2, micro=1, x0=X0, sampling=sampling)
    exact = exact_moments.sde_moments(problem, "m-usam", horizon=0.2, **kwargs)
    lin = exact_moments.linear_sde(problem, "m-usam", eta=0.1, rho=0.2, batch=2, micro=1,
                                   sampling=sampling)
    start = exact_moments.initial_state(problem, X0)

    def euler(cells: int) -> np.ndarray:
        return np.linalg.matrix_power(exact_moments.euler_operator(lin, 0.2 / cells), cells) @ start

    gaps = [np.abs(euler(cells) - exact.state[-1]).max() for cells in (16, 32, 64)]
    assert 1.7 < gaps[0] / gaps[1] < 2.3 and 1.7 < gaps[1] / gaps[2] < 2.3
    for dt, cells in ((0.1 / 4, 8), (0.1 / 32, 64)):
        run = sde.simulate(problem, "m-usam", horizon=0.2, chains=chains, seed=3, dt=dt,
                           every=None, **kwargs)
        mean, second, mean_se, second_se = mc_moments(run.states[-1])
        reference = euler(cells)
        assert (np.abs(mean - reference[1:3]) < 4.5 * mean_se).all()
        assert (np.abs(second - reference[3:].reshape(2, 2)) < 4.5 * second_se).all()
    # at dt = eta/32 the time-step bias is a fraction of the standard error
    assert (np.abs(reference - exact.state[-1])[1:3] < 0.5 * mean_se).all()
    assert (np.abs(mean - exact.mean[-1]) < 4.5 * mean_se).all()
    assert (np.abs(second - exact.second[-1]) < 4.5 * second_se).all()


@pytest.mark.parametrize("rule, micro", [("usam", None), ("m-usam", 1), ("n-usam", None)])
def test_sde_moments_equal_the_ornstein_uhlenbeck_closed_form(rule, micro):
    """Equal Hessians h in 1-D: grad tr V = 0, drift -h (1 + rho h)(x - cbar), constant
    diffusion eta c(B) V, so mean and variance are those of an OU process."""
    h, eta, rho, x0, t = 1.5, 0.05, 0.2, 3.0, 0.7
    centers = torch.tensor([[-1.0], [2.0]], dtype=torch.float64)
    problem = Quadratic(torch.full((2, 1, 1), h, dtype=torch.float64), centers)
    moments = exact_moments.sde_moments(problem, rule, eta=eta, rho=rho, batch=2, micro=micro,
                                        x0=[x0], horizon=t, every=2)
    k, cbar = h * (1 + rho * h), 0.5
    variance_v = h**2 * 2.25
    times = moments.times
    mean = cbar + (x0 - cbar) * np.exp(-k * times)
    var = eta * 0.5 * variance_v * (1 - np.exp(-2 * k * times)) / (2 * k)
    np.testing.assert_allclose(moments.mean[:, 0], mean, rtol=1e-12)
    np.testing.assert_allclose(moments.second[:, 0, 0], var + mean**2, rtol=1e-12)


def test_at_rho_zero_every_rule_has_sgd_moments():
    """Every registered rule at rho = 0 steps as SGD (its map is affine and gives SGD's moments
    exactly) unless Gibbs weights enter its descent gradient; every SDE reduces to SGD's."""
    problem, refused = quadratic(), set()
    for sampling in SCHEMES:
        common = dict(eta=0.1, rho=0.0, batch=2, x0=X0, sampling=sampling)
        sgd = exact_moments.discrete_moments(problem, "sgd", steps=5, **common)
        sgd_sde = exact_moments.sde_moments(problem, "sgd", horizon=0.5, **common)
        for name in rule_names():
            rule = get_rule(name)
            micro = 1 if rule.micro else None
            try:
                moments = exact_moments.discrete_moments(problem, name, steps=5, micro=micro, **common)
            except NotAffineError as error:
                assert repr(name) in str(error)
                refused.add(name)
            else:
                np.testing.assert_allclose(moments.state, sgd.state, rtol=0, atol=1e-13)
            if layers.support("sde", rule) is None:
                flow = exact_moments.sde_moments(problem, name, horizon=0.5, micro=micro, **common)
                np.testing.assert_allclose(flow.state, sgd_sde.state, rtol=0, atol=1e-13)
    assert refused == set(rule_names(lambda r: r.descent_weights == "all"))


@pytest.mark.parametrize("rule, micro", [("sam", None), ("m-sam", 1), ("rw-sam", None)])
def test_a_non_affine_rule_is_refused_by_name(rule, micro):
    with pytest.raises(NotAffineError, match=f"rule '{rule}' is not affine"):
        exact_moments.discrete_moments(quadratic(), rule, eta=0.1, rho=0.1, batch=2, micro=micro,
                                       x0=X0, steps=3)


def test_a_user_rule_with_a_state_dependent_scale_and_a_non_quadratic_problem_are_refused():
    scaled = Rule("scaled-usam", "part", False, False, "USAM with a state-dependent scale",
                  scale=lambda x: x**2 + 0.1)
    with registered(scaled):
        with pytest.raises(NotAffineError, match="'scaled-usam'"):
            exact_moments.step_maps(quadratic(), "scaled-usam", eta=0.1, rho=0.1, batch=2)
    logistic = LogisticRegression(torch.randn(4, 2, dtype=torch.float64), torch.tensor([0., 1., 0., 1.]))
    with pytest.raises(NotAffineError, match="'sgd'"):
        exact_moments.step_maps(logistic, "sgd", eta=0.1, rho=0.0, batch=2)
    with pytest.raises(ValueError, match="horizon must be a positive multiple"):
        exact_moments.sde_moments(quadratic(), "sgd", eta=0.3, rho=0.0, batch=2, x0=X0, horizon=1.0)
    with pytest.raises(ValueError, match="exact moments enumerate every ordered batch"):
        exact_moments.step_maps(quadratic(n=40), "sgd", eta=0.1, rho=0.0, batch=4)
    with pytest.raises(ValueError, match="variant must be one of"):
        exact_moments.linear_sde(quadratic(), "usam", eta=0.1, rho=0.1, batch=2, variant="none")


def test_fit_expansion_and_local_orders_recover_known_coefficients():
    etas = [0.1 / 4**k for k in range(6)]
    errors = [0.3 * e**0.5 - 2 * e + 5 * e**1.5 for e in etas]
    fit = exact_expansion.fit_expansion(etas, errors, terms=3)
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((0.3, -2.0, 5.0), rel=1e-9)
    assert exact_expansion.local_orders(etas, [7 * e for e in etas]) == pytest.approx([1.0] * 5)
    with pytest.raises(ValueError, match="terms must be one of"):
        exact_expansion.fit_expansion(etas, errors, terms=4)


def test_the_weighted_expansion_fit_gives_the_coefficients_and_their_standard_errors():
    etas = [0.4 / 2**k for k in range(6)]
    errors = [0.01 * e**0.5 + 0.02 * e for e in etas]
    stderrs = [1e-4 * e**0.5 for e in etas]      # equal noise on e / sqrt(eta): plain least squares
    fit = exact_expansion.fit_expansion(etas, errors, 2, stderrs=stderrs)
    assert (fit["a"], fit["b"]) == pytest.approx((0.01, 0.02), rel=1e-9)
    design = np.stack([np.ones(6), np.sqrt(etas)], axis=1)
    covariance = 1e-8 * np.linalg.inv(design.T @ design)
    assert (fit["a_stderr"], fit["b_stderr"]) == pytest.approx(tuple(np.sqrt(np.diag(covariance))))
    assert fit["chi2_per_dof"] == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    zs = []
    for _ in range(300):
        noisy = [e + s * rng.normal() for e, s in zip(errors, stderrs)]
        trial = exact_expansion.fit_expansion(etas, noisy, 2, stderrs=stderrs)
        zs.append((trial["a"] - 0.01) / trial["a_stderr"])
    assert 0.85 < np.std(zs) < 1.15 and abs(np.mean(zs)) < 0.2
    with pytest.raises(ValueError, match="stderrs must be positive"):
        exact_expansion.fit_expansion(etas, errors, 2, stderrs=[0.0] * 6)


def test_predicted_a_is_the_first_order_gap_of_the_two_sdes():
    """kappa dD/drho from the Frechet derivative equals the noiseless difference quotient of
    the two SDE solutions (Richardson-extrapolated, so its own error is O(rho^2))."""
    problem, kappa, rho = quadratic(), 0.5, 1e-5
    predicted = exact_expansion.predicted_sqrt_coefficient(problem, "m-usam", kappa=kappa, batch=2,
                                                           micro=1, x0=X0, horizon=1.0)

    def quotient(radius: float) -> dict[str, float]:
        common = dict(eta=0.1, rho=radius, batch=2, micro=1, x0=X0, horizon=1.0,
                      drop_terms=("noise",))
        full = exact_moments.sde_moments(problem, "m-usam", variant="full", **common)
        without = exact_moments.sde_moments(problem, "m-usam", variant="without_noise_term", **common)
        return {name: (full.tests[name][-1] - without.tests[name][-1]) / radius for name in full.tests}

    small, large = quotient(rho), quotient(2 * rho)
    for name, value in predicted.items():
        assert value == pytest.approx(kappa * (2 * small[name] - large[name]), rel=1e-6, abs=1e-10)
    assert set(exact_expansion.predicted_sqrt_coefficient(
        problem, "n-usam", kappa=kappa, batch=2, x0=X0, horizon=1.0).values()) == {0.0}


@pytest.mark.parametrize("sampling", SCHEMES)
def test_weak_error_is_order_one_with_the_term_and_leaves_sqrt_eta_without(sampling):
    """rho = kappa sqrt(eta), E f at T = 1: with the tr V term the local order tends to 1 and
    the sqrt(eta) coefficient vanishes; without it the coefficient is the predicted one and
    scales with c(m)."""
    problem, etas = quadratic(), [0.1 / 4**k for k in range(1, 7)]
    fitted = {}
    for rule, micro in (("usam", None), ("m-usam", 1)):
        errors, expansions = exact_expansion.expansion_sweep(
            problem, rule, kappa=0.5, etas=etas, batch=2, micro=micro, sampling=sampling, x0=X0,
            horizon=1.0, test_fns=["loss"])
        by_variant = {row["variant"]: row for row in expansions}
        full, without = by_variant["full"], by_variant["without_noise_term"]
        assert 0.85 < full["local_order_smallest"] < 1.15
        assert 0.4 < without["local_order_smallest"] < 0.6
        assert abs(full["a"]) < 0.02 * abs(without["a"])
        assert without["a"] == pytest.approx(without["predicted_a"], rel=0.02)
        assert all(row["weak_error_loss"] == row["weak_error_T_loss"] for row in errors)
        fitted[micro or 2] = without["a"]
    ratio = float(sampling_factor(1, 4, sampling) / sampling_factor(2, 4, sampling))
    assert fitted[1] / fitted[2] == pytest.approx(ratio, rel=0.1)
    assert math.isfinite(ratio)


def test_the_experiment_writes_its_table_and_figure(tmp_path, capsys, monkeypatch):
    """The script end to end on a smaller grid than --quick (two runs, five etas)."""
    import script_module
    from sdesam.experiment.records import read_record

    script = script_module.load_script("experiments/weak_error_exact.py", "weak_error_exact_script")
    monkeypatch.setitem(script.QUICK, "etas", [0.1 / 4**k for k in range(5)])
    monkeypatch.setitem(script.QUICK, "runs", [["sgd", None], ["m-usam", 1]])
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    data = read_record(tmp_path / "weak_error_exact.json")
    settings, results = data["settings"], data["results"]
    assert settings["experiment"] == "weak_error_exact" and settings["quick"]
    assert set(results) == {"errors", "expansions"} and data["metadata"]["wall_time_s"] > 0
    for table in results.values():
        assert all(not isinstance(value, (dict, list)) for row in table for value in row.values())
    runs = {(r["rule"], r["micro"], r["sampling"], r["variant"]) for r in results["expansions"]}
    assert len(runs) == 2 * 3                     # m-usam also without the term, two schemes
    assert all(r["weak_error_loss"] >= r["weak_error_T_loss"] for r in results["errors"])
    assert (tmp_path / "weak_error_exact.png").stat().st_size > 0
    assert "predicted a" in capsys.readouterr().out
