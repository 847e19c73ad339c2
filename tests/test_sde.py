"""SDEs: exact solutions (OU, quadratic USAM means), torchsde agreement, drift and diffusion."""

import math

import pytest
import torch

from sdesam.simulation import ensemble, sde
from sdesam.algorithms import Rule, get_rule, sampling_factor
from sdesam.problems import LinearRegression, LogisticRegression, Quadratic, TeacherStudent


def ou_problem(h: float = 2.0):
    """Equal Hessians h I: SGD's SDE is an Ornstein-Uhlenbeck process with additive noise."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    return Quadratic(h * torch.eye(2, dtype=torch.float64).expand(6, 2, 2).clone(), centers)


def test_ornstein_uhlenbeck_mean_and_variance():
    h, eta, batch, horizon = 2.0, 0.1, 2, 1.0
    problem = ou_problem(h)
    result = sde.simulate(problem, "sgd", eta=eta, rho=0.0, batch=batch, x0=[1.0, 1.0],
                          horizon=horizon, chains=40000, seed=0, dt=eta / 50)
    times, path = result.times, result.states
    assert times.shape == (11,) and path.shape == (11, 40000, 2)
    assert torch.allclose(times, torch.arange(11, dtype=torch.float64) * eta)
    cbar = problem.centers.mean(0)
    v = h**2 * torch.cov(problem.centers.T, correction=0)
    for k in (3, 10):
        t = float(times[k])
        mean = cbar + math.exp(-h * t) * (torch.ones(2, dtype=torch.float64) - cbar)
        var = eta / batch * v.diagonal() / (2 * h) * (1 - math.exp(-2 * h * t))
        stderr = (var / 40000).sqrt()
        # Euler bias with dt = 2e-3 is about 1e-3 relative; the Monte-Carlo error dominates
        assert ((path[k].mean(0) - mean).abs() < 4 * stderr + 2e-3 * mean.abs()).all()
        assert ((path[k].var(0) - var).abs() < 0.05 * var).all()


def test_usam_sde_mean_on_quadratic_matches_the_linear_ode_and_discrete_mean():
    """With shared Hessian H, E of USAM and of its SDE are linear: the SDE mean solves
    m' = -(H + rho H^2)(m - c) (tr V is constant there); discrete USAM's mean follows
    m_{k+1} = m_k - eta (H + rho H^2)(m_k - c) exactly."""
    hessian = torch.tensor([[1.5, 0.3], [0.3, 0.8]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    problem = Quadratic(hessian.expand(5, 2, 2), centers)
    rho, eta, steps = 0.2, 0.05, 10
    a = hessian + rho * hessian @ hessian
    cbar = centers.mean(0)
    x0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    path = sde.simulate(problem, "usam", eta=eta, rho=rho, batch=2, x0=x0, horizon=eta * steps,
                        chains=1, seed=0, dt=eta / 100, drop_terms=("noise",)).states
    exact = cbar + torch.linalg.matrix_exp(-a * eta * steps) @ (x0 - cbar)
    assert torch.allclose(path[-1, 0], exact, atol=2e-3)
    discrete_mean = x0.clone()
    for _ in range(steps):
        discrete_mean = discrete_mean - eta * a @ (discrete_mean - cbar)
    walk = ensemble.run(problem, "usam", eta=eta, rho=rho, batch=2, x0=x0, steps=steps,
                        chains=40000, seed=0).states
    stderr = walk[-1].std(0) / 200
    assert ((walk[-1].mean(0) - discrete_mean).abs() < 4 * stderr).all()


def test_fast_path_and_torchsde_give_the_same_paths():
    problem = LogisticRegression(torch.randn(6, 2, dtype=torch.float64), torch.tensor([0., 1.] * 3), l2=0.1)
    kwargs = dict(eta=0.1, rho=0.2, batch=4, micro=2, x0=[1.0, -1.0], horizon=0.5, chains=64,
                  seed=5, dt=0.05)
    for algorithm in ("m-usam", "m-sam"):
        fast_run = sde.simulate(problem, algorithm, solver="fast", **kwargs)
        slow_run = sde.simulate(problem, algorithm, solver="torchsde", **kwargs)
        assert torch.equal(fast_run.times, slow_run.times)
        fast, slow = fast_run.states, slow_run.states
        assert torch.allclose(fast, slow, rtol=0, atol=1e-12)
        again = sde.simulate(problem, algorithm, chunk=7, **kwargs).states
        # chunks of chains change only BLAS blocking: equal to rounding (bit-equal on 1 thread)
        assert torch.allclose(fast, again, rtol=0, atol=1e-13)


@pytest.mark.parametrize("algorithm, size", [("usam", 4), ("m-usam", 2), ("m-sam", 2), ("sam", 4),
                                             ("n-sam", None), ("n-usam", None)])
@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_drift_is_the_first_order_mean_of_the_discrete_update(algorithm, size, sampling):
    """(E G - grad f)/rho of the discrete rule, by exact enumeration of the batches, tends to
    minus the drift's regulariser as rho -> 0."""
    import itertools
    problem = TeacherStudent(n=4, inputs=1, hidden=2, noise=0.3, seed=2)
    x = torch.tensor([[0.7, -0.4, 0.9, 0.5]], dtype=torch.float64)
    micro = 2 if algorithm.startswith("m-") else None
    batches = (itertools.product(range(4), repeat=4) if sampling == "with-replacement"
               else itertools.permutations(range(4), 4))
    idx = torch.tensor(list(batches))
    rho = 1e-5
    new = ensemble.step(problem, algorithm, x.expand(len(idx), 4), idx, eta=1.0, rho=rho, micro=micro)
    mean_direction = (x - new).mean(0)
    model = sde.AlgorithmSDE(problem, algorithm, eta=0.1, rho=rho, batch=4, micro=micro, sampling=sampling)
    assert model.sets_exact
    g = problem.grad(x)[0]
    expected = (-model.f(0.0, x)[0] - g) / rho
    assert torch.allclose((mean_direction - g) / rho, expected, atol=1e-3, rtol=1e-3)


def test_diffusion_covariance_is_c_of_b_times_V():
    problem = TeacherStudent(n=6, inputs=2, hidden=2, noise=0.2)
    x = torch.randn(3, problem.dim, dtype=torch.float64)
    for sampling in ("with-replacement", "without-replacement"):
        model = sde.AlgorithmSDE(problem, "m-usam", eta=0.1, rho=0.3, batch=4, micro=2, sampling=sampling)
        g = model.diffusion(x)
        c = float(sampling_factor(4, 6, sampling))
        assert torch.allclose(g @ g.transpose(1, 2), 0.1 * c * problem.noise_covariance(x))
        v = torch.randn(3, 6, dtype=torch.float64)
        assert torch.allclose(model.g_prod(0.0, x, v), (g @ v.unsqueeze(-1)).squeeze(-1))


def test_rho_zero_reduces_every_rule_to_the_sgd_sde():
    problem = TeacherStudent(n=6, inputs=2, hidden=2, noise=0.2)
    kwargs = dict(eta=0.1, rho=0.0, batch=4, x0=torch.full((6,), 0.3, dtype=torch.float64),
                  horizon=0.3, chains=8, seed=1)
    reference = sde.simulate(problem, "sgd", **kwargs).states
    for algorithm in ("usam", "n-sam", "sam"):
        assert torch.allclose(sde.simulate(problem, algorithm, **kwargs).states, reference)
    for micro in (1, 2):
        assert torch.allclose(sde.simulate(problem, "m-usam", micro=micro, **kwargs).states, reference)


def test_sam_expectation_enumerates_few_batches_and_draws_fresh_ones_beyond():
    """Few distinct batches: every one with its probability; many: DRIFT_BATCHES drawn per
    chain, fixed by (seed, t) and fresh at every other time (tests/test_sde_drift_estimator.py
    checks the estimate itself)."""
    members, p = sde.enumerate_batches(3, 2, "with-replacement")
    assert members.tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]]
    assert torch.allclose(p, torch.tensor([1, 2, 2, 1, 2, 1], dtype=torch.float64) / 9)
    few = sde.AlgorithmSDE(TeacherStudent(n=4, inputs=1, hidden=2), "sam", eta=0.1, rho=0.1, batch=3)
    assert few.sets_exact and few.set_count == 20 and few.batch_draws(0.1, 5) is None
    many = sde.AlgorithmSDE(TeacherStudent(n=40, inputs=1, hidden=2), "sam", eta=0.1, rho=0.1,
                            batch=8, sampling="without-replacement", seed=3)
    assert not many.sets_exact and many.set_count == sde.DRIFT_BATCHES
    draws = many.batch_draws(0.1, 5)
    assert draws.shape == (5, sde.DRIFT_BATCHES, 8)
    assert all(len(set(batch.tolist())) == 8 for batch in draws.view(-1, 8))
    assert torch.equal(draws, many.batch_draws(0.1, 5))
    assert not torch.equal(draws, many.batch_draws(0.2, 5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lam=1.0), "lam is not accepted"),
    (dict(x0=[float("nan"), 0.0]), "x0 must be finite"),
    (dict(method="milstein"), "method must be one of euler"),
    (dict(dt=0.03), "dt must divide eta"),
    (dict(horizon=0.25), "multiple of eta"),
    (dict(drop_terms=("curvature",)), "drop_terms must be drawn"),
    (dict(solver="rk4"), "solver must be one of"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    problem = ou_problem()
    args = dict(algorithm="usam", eta=0.1, rho=0.1, batch=2, x0=[0.0, 0.0], horizon=0.5,
                chains=2, seed=0)
    args.update(kwargs)
    algorithm = args.pop("algorithm")
    with pytest.raises(ValueError, match=match):
        sde.simulate(problem, algorithm, **args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths_match_cpu_statistics():
    problem = ou_problem()
    kwargs = dict(eta=0.1, rho=0.1, batch=2, x0=[1.0, 1.0], horizon=1.0, chains=20000, seed=0)
    cpu = sde.simulate(problem, "usam", **kwargs).states
    gpu = sde.simulate(problem, "usam", device="cuda", **kwargs).states
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu[-1].mean(0).cpu(), cpu[-1].mean(0), atol=0.02)


def symbolic_family():
    import sympy
    u, v = sympy.symbols("u v")
    losses = [sympy.log(1 + sympy.exp(u - 2 * v)) + u**2 / 4, (u * v - 1) ** 2 / 2,
              sympy.cos(u) + v**2, u**4 / 12 + v / 3]
    return losses, [u, v]


def check_against_derivation(algorithm, micro, sampling):
    """Drift and diffusion of AlgorithmSDE equal those sdesam.symbolic derives, numerically."""
    import sympy
    from sdesam.problems import from_sympy
    from sdesam.symbolic import derive
    from sdesam.symbolic.symbols import rho as rho_symbol
    losses, variables = symbolic_family()
    derived = derive(algorithm, losses, variables, batch=4, micro=micro, sampling=sampling)
    problem = from_sympy(losses, variables)
    eta = 0.1
    rho = 0.3 if get_rule(algorithm).perturbed else None    # SGD refuses a rho (one keyword policy)
    model = sde.AlgorithmSDE(problem, algorithm, eta=eta, rho=rho, batch=4, micro=micro, sampling=sampling)
    def evaluate(matrix, point):
        values = {rho_symbol: sympy.Rational(3, 10), **dict(zip(variables, point))}
        return torch.tensor(matrix.subs(values).evalf(20).tolist(), dtype=torch.float64)

    for point in ([sympy.Rational(3, 10), sympy.Rational(-1, 2)], [sympy.Rational(11, 10), sympy.Rational(2, 5)]):
        x = torch.tensor([[float(p) for p in point]], dtype=torch.float64)
        assert torch.allclose(model.f(0.0, x)[0], evaluate(derived.drift, point).flatten(), atol=1e-10)
        g = model.diffusion(x)[0]
        assert torch.allclose(g @ g.T / eta, evaluate(derived.diffusion, point), atol=1e-10)


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_m_usam_sde_matches_the_symbolic_derivation(sampling):
    check_against_derivation("m-usam", 2, sampling)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, micro", [("usam", None), ("sam", None), ("m-sam", 2),
                                              ("n-usam", None), ("n-sam", None), ("sgd", None)])
@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_every_sde_matches_the_symbolic_derivation(algorithm, micro, sampling):
    check_against_derivation(algorithm, micro, sampling)


def test_rw_sam_drift_at_zero_temperature_is_sams():
    problem = TeacherStudent(n=5, inputs=1, hidden=2, noise=0.3, seed=1)
    x = torch.randn(4, problem.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for sampling in ("with-replacement", "without-replacement"):
        kwargs = dict(eta=0.1, rho=0.2, batch=3, sampling=sampling)
        rw = sde.AlgorithmSDE(problem, "rw-sam", lam=0.0, **kwargs)
        assert torch.allclose(rw.f(0.0, x), sde.AlgorithmSDE(problem, "sam", **kwargs).f(0.0, x),
                              atol=1e-13)
        assert not torch.allclose(sde.AlgorithmSDE(problem, "rw-sam", lam=3.0, **kwargs).f(0.0, x),
                                  rw.f(0.0, x), atol=1e-6)


def _logistic_in_4d():
    gen = torch.Generator().manual_seed(3)
    return LogisticRegression(torch.randn(4, 4, generator=gen, dtype=torch.float64),
                              torch.tensor([0., 1., 1., 0.]), l2=0.2)


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
@pytest.mark.parametrize("make_problem", [
    lambda: TeacherStudent(n=4, inputs=1, hidden=2, noise=0.3, seed=2), _logistic_in_4d],
    ids=["per-sample-route", "feature-route"])
def test_rw_sam_drift_is_the_batch_average_of_its_exact_first_order_term(sampling, make_problem):
    """Brute force over every ordered batch: -grad f - rho mean_S (1/B) sum_j H_j u_S, with
    per-sample Hessians from autograd and u_S the normalised Gibbs-weighted batch gradient;
    on a network (per-sample gradients) and on logistic regression with a ridge (the feature
    route)."""
    import itertools
    from torch.func import hessian
    problem = make_problem()
    lam, rho, batch = 2.5, 0.3, 3
    batches = list(itertools.product(range(4), repeat=batch) if sampling == "with-replacement"
                   else itertools.permutations(range(4), batch))
    model = sde.AlgorithmSDE(problem, "rw-sam", eta=0.1, rho=rho, batch=batch, lam=lam, sampling=sampling)
    for point in ([0.7, -0.4, 0.9, 0.5], [-0.2, 1.1, 0.3, -0.8]):
        x = torch.tensor(point, dtype=torch.float64)
        grads = problem.sample_grads(x)
        hessians = torch.stack([hessian(lambda p, i=i: problem.sample_losses(p)[i])(x) for i in range(4)])
        total = torch.zeros(4, dtype=torch.float64)
        for idx in batches:
            g = grads[list(idx)]
            p = torch.softmax(lam * g.norm(dim=-1), dim=0)
            u = (p.unsqueeze(-1) * g).sum(0)
            u = u / u.norm()
            total += hessians[list(idx)].mean(0) @ u
        expected = -grads.mean(0) - rho * total / len(batches)
        assert torch.allclose(model.f(0.0, x.unsqueeze(0))[0], expected, atol=1e-12)


def test_rw_sam_drift_is_the_first_order_mean_of_the_discrete_update():
    import itertools
    problem = TeacherStudent(n=4, inputs=1, hidden=2, noise=0.3, seed=2)
    x = torch.tensor([[0.7, -0.4, 0.9, 0.5]], dtype=torch.float64)
    idx = torch.tensor(list(itertools.product(range(4), repeat=3)))
    rho = 1e-5
    new = ensemble.step(problem, "rw-sam", x.expand(len(idx), 4), idx, eta=1.0, rho=rho, lam=2.0)
    model = sde.AlgorithmSDE(problem, "rw-sam", eta=0.1, rho=rho, batch=3, lam=2.0)
    g = problem.grad(x)[0]
    assert torch.allclose(((x - new).mean(0) - g) / rho, (-model.f(0.0, x)[0] - g) / rho,
                          atol=1e-3, rtol=1e-3)


class _Hidden:
    """A problem with its feature form hidden: the SDE takes the generic per-sample route."""

    def __init__(self, problem):
        self._problem = problem

    def __getattr__(self, name):
        return getattr(self._problem, name)

    def feature_form(self):
        return None


def _feature_problems():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    return [LinearRegression(features, torch.randn(7, generator=gen, dtype=torch.float64)),
            LogisticRegression(features, (torch.rand(7, generator=gen) < 0.5).double(), l2=0.3)]


@pytest.mark.parametrize("problem", _feature_problems(), ids=["least-squares", "logistic"])
@pytest.mark.parametrize("name, drop, batches", [
    ("sgd", (), "auto"), ("n-usam", (), "auto"), ("usam", (), "auto"), ("m-usam", (), "auto"),
    ("m-usam", ("trace_V",), "auto"), ("m-usam", ("gradient_norm",), "auto"),
    ("m-usam", ("noise",), "auto"), ("n-sam", (), "auto"), ("sam", ("trace_V",), "auto"),
    ("rw-sam", ("trace_V",), "auto"), ("scaled-usam", (), "auto"),
    ("scaled-sam", ("trace_V",), "auto"), ("sam", (), "auto"), ("sam", (), "exact"),
    ("m-sam", (), "auto"), ("m-sam", (), 3), ("rw-sam", (), "auto"), ("rw-sam", (), "exact"),
    ("rw-sam-wr", (), 3), ("rw-sam-wr", (), "exact"), ("scaled-sam", (), 3),
    ("scaled-sam", (), "exact")])
def test_the_route_for_problems_linear_in_features_gives_the_generic_drift_and_noise(
        problem, name, drop, batches):
    """The [chains, N] route of a problem with a feature form is the same SDE as the per-sample
    [chains, N, d] route, for every rule, the expectations over batches enumerated or drawn
    (the same draws: they come from the seed and the time)."""
    scaled = {"scaled-usam": Rule("scaled-usam", "part", False, False, "scaled USAM",
                                  scale=lambda xk: xk**2 + 1),
              "scaled-sam": Rule("scaled-sam", "part", True, False, "scaled SAM",
                                 scale=lambda xk: xk**2 + 1)}
    rule = scaled.get(name) or get_rule(name)
    options = dict(eta=0.1, batch=4, micro=2 if rule.micro else None, drop_terms=drop,
                   rho=0.0 if name == "sgd" else 0.3, lam=1.5 if rule.weighted else None,
                   drift_batches=batches, seed=4)
    fast = sde.AlgorithmSDE(problem, rule, **options)
    generic = sde.AlgorithmSDE(_Hidden(problem), rule, **options)
    assert generic.form is None and fast.form is not None
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    for got, want in zip(fast.f_and_g_prod(0.0, y, v), generic.f_and_g_prod(0.0, y, v)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.f(0.0, y), generic.f(0.0, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.g_prod(0.0, y, v), generic.g_prod(0.0, y, v), rtol=1e-12,
                               atol=1e-12)
