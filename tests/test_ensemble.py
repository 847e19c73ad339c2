"""Discrete ensembles: one vectorised step against the reference rules of sdesam.algorithms."""

import pytest
import sympy
import torch

from sdesam.simulation import ensemble
from sdesam.simulation.inputs import drawn_positions
from sdesam.algorithms import ALGORITHMS, direction, get_rule, gibbs_weights, reweighted_gradient
from sdesam.problems import LogisticRegression, Quadratic, TeacherStudent, from_sympy

CHAINS, BATCH, MICRO = 3, 4, 2


def micro_of(algorithm):
    return MICRO if get_rule(algorithm).micro else None


def rho_of(algorithm, rho):
    """rho for a rule with a perturbation; None (not given) for one without."""
    return rho if get_rule(algorithm).perturbed else None


def reference_step(problem, algorithm, x, idx, eta, rho, lam, uniforms=None):
    """Chain by chain, with the plain reference ``direction`` and per-chain gradients; a rule
    that draws its perturbation draws at ``uniforms [chains, k]``."""
    micro = micro_of(algorithm)
    out = []
    for c in range(x.shape[0]):
        parts = list(idx[c].split(micro)) if micro else [idx[c]]
        weights = gibbs_weights(problem.sample_grads(x[c])[idx[c]].norm(dim=-1), lam)

        def weighted(point, i):
            return (weights.unsqueeze(-1) * problem.sample_grads(point)[i]).sum(0)

        def draw(i):
            return i[drawn_positions(weights, uniforms[c])]

        g = direction(algorithm, x[c], parts, rho, grad=problem.grad, norm=torch.linalg.norm,
                      reweighted_grad=lambda p, i: reweighted_gradient(problem.sample_grads(p)[i], lam),
                      weighted_grad=weighted, draw=draw)
        out.append(x[c] - eta * g)
    return torch.stack(out)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vectorised_step_equals_reference_direction(algorithm):
    problem = TeacherStudent(n=10, inputs=2, hidden=2, noise=0.2, seed=3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(CHAINS, problem.dim, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, problem.n, (CHAINS, BATCH), generator=gen)
    rule = get_rule(algorithm)
    lam = 2.0 if rule.weighted else None
    draws = torch.Generator().manual_seed(7)
    uniforms = torch.rand(CHAINS, rule.ascent_draw, generator=torch.Generator().manual_seed(7),
                          dtype=torch.float64)
    new = ensemble.step(problem, algorithm, x, idx, eta=0.1, rho=rho_of(algorithm, 0.3),
                        micro=micro_of(algorithm), lam=lam, generator=draws)
    expected = reference_step(problem, algorithm, x, idx, 0.1, 0.3, 2.0, uniforms)
    assert torch.allclose(new, expected, atol=1e-12)
    assert not torch.allclose(new, x)


@pytest.mark.parametrize("algorithm", ["rw-sam-wd", "rw-sam-wr", "rw-sam-draw"])
def test_extended_rw_sam_readings_run_as_themselves(algorithm):
    """rw-sam-wd / -wr / -draw give other iterates than rw-sam from the same seed (they ran as
    plain rw-sam before), and equal the reference map step by step."""
    problem = TeacherStudent(n=10, inputs=2, hidden=2, noise=0.2, seed=3)
    options = dict(eta=0.1, rho=0.3, batch=BATCH, lam=2.0, x0=torch.full((problem.dim,), 0.3,
                   dtype=torch.float64), steps=3, chains=CHAINS, seed=5)
    plain = ensemble.run(problem, "rw-sam", **options).states
    run = ensemble.run(problem, algorithm, **options).states
    assert not torch.allclose(run[1:], plain[1:])
    generator = torch.Generator().manual_seed(5)
    x = run[0]
    for k in range(3):
        idx = ensemble.draw_batches(generator, CHAINS, problem.n, BATCH, "with-replacement")
        uniforms = torch.rand(CHAINS, get_rule(algorithm).ascent_draw, generator=generator,
                              dtype=torch.float64)
        x = reference_step(problem, algorithm, x, idx, 0.1, 0.3, 2.0, uniforms)
        torch.testing.assert_close(run[k + 1], x, rtol=0, atol=1e-12)


def test_a_rule_that_draws_needs_a_generator_in_step():
    problem = TeacherStudent(n=10, inputs=2, hidden=2, noise=0.2, seed=3)
    x = torch.zeros(2, problem.dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="generator is required by 'rw-sam-draw'"):
        ensemble.step(problem, "rw-sam-draw", x, torch.zeros(2, 3, dtype=torch.long), eta=0.1, rho=0.1)


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if not get_rule(a).weighted])
def test_symbolic_one_step_map_equals_ensemble_step(algorithm):
    """The reference rule evaluated exactly in sympy on a sympy family equals the torch step."""
    u, v = sympy.symbols("u v")
    losses = [sympy.log(1 + sympy.exp(u - 2 * v)) + u**2 / 4, (u * v - 1) ** 2 / 2,
              sympy.cos(u) + v**2, u**4 / 12 + v / 3, (u + v) ** 2 * sympy.Rational(3, 4)]
    variables = [u, v]
    gradients = [sympy.Matrix([sympy.diff(f, s) for s in variables]) for f in losses]
    problem = from_sympy(losses, variables)
    point = [sympy.Rational(3, 10), sympy.Rational(-1, 2)]
    batch = [4, 1, 1, 3]

    def grad(p, idx):
        idx = range(len(losses)) if idx is None else idx
        values = {s: c for s, c in zip(variables, p)}
        return sum((gradients[i].subs(values) for i in idx), sympy.zeros(2, 1)) / len(idx)

    micro = micro_of(algorithm)
    parts = [batch[:MICRO], batch[MICRO:]] if micro else [batch]
    rho = sympy.Rational(1, 5)
    exact = sympy.Matrix(point) - sympy.Rational(1, 10) * direction(
        algorithm, sympy.Matrix(point), parts, rho, grad, norm=lambda w: sympy.sqrt((w.T * w)[0, 0]))
    x = torch.tensor([[0.3, -0.5]], dtype=torch.float64)
    new = ensemble.step(problem, algorithm, x, torch.tensor([batch]), eta=0.1,
                        rho=rho_of(algorithm, 0.2), micro=micro)
    assert torch.allclose(new[0], torch.tensor([float(e.evalf(30)) for e in exact], dtype=torch.float64),
                          atol=1e-12)


def test_rw_sam_with_zero_temperature_is_sam():
    problem = TeacherStudent(n=8, inputs=2, hidden=2, noise=0.1)
    x = torch.randn(5, problem.dim, dtype=torch.float64)
    idx = torch.randint(0, 8, (5, 4))
    assert torch.allclose(ensemble.step(problem, "rw-sam", x, idx, eta=0.1, rho=0.2, lam=0.0),
                          ensemble.step(problem, "sam", x, idx, eta=0.1, rho=0.2))


def test_run_is_reproducible_and_chains_are_independent():
    gen = torch.Generator().manual_seed(0)
    problem = LogisticRegression(torch.randn(8, 2, generator=gen, dtype=torch.float64),
                                 torch.tensor([0., 1.] * 4), l2=0.1)
    kwargs = dict(eta=0.1, rho=0.05, batch=4, micro=1, x0=[1.0, -1.0], steps=6, chains=50)
    a = ensemble.run(problem, "m-usam", seed=3, **kwargs).states
    b = ensemble.run(problem, "m-usam", seed=3, chunk=7, **kwargs).states
    c = ensemble.run(problem, "m-usam", seed=4, **kwargs).states
    assert a.shape == (7, 50, 2) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], torch.tensor([[1.0, -1.0]] * 50, dtype=torch.float64))
    assert len(torch.unique(a[-1], dim=0)) > 40


def test_sgd_ensemble_mean_on_quadratic_matches_the_exact_recursion():
    """E x_{k+1} = x_k - eta H (E x_k - c) for SGD on a quadratic with shared Hessian."""
    gen = torch.Generator().manual_seed(0)
    hessian = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    centers = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    problem = Quadratic(hessian.expand(6, 2, 2), centers)
    path = ensemble.run(problem, "sgd", eta=0.1, rho=0.0, batch=2, x0=[1.0, 1.0], steps=10,
                        chains=40000, seed=0).states
    mean = torch.tensor([1.0, 1.0], dtype=torch.float64)
    for _ in range(10):
        mean = mean - 0.1 * hessian @ (mean - centers.mean(0))
    stderr = path[-1].std(0) / 200
    assert ((path[-1].mean(0) - mean).abs() < 4 * stderr).all()


def test_without_replacement_batches_hold_distinct_samples():
    gen = torch.Generator().manual_seed(0)
    idx = ensemble.draw_batches(gen, 100, 6, 6, "without-replacement")
    assert torch.equal(idx.sort(dim=1).values, torch.arange(6).expand(100, 6))


@pytest.mark.parametrize("kwargs, match", [
    (dict(algorithm="adam"), "algorithm must be one of"),
    (dict(micro=3), "micro must divide batch"),
    (dict(algorithm="sam", micro=2), "micro is not accepted by 'sam'"),
    (dict(algorithm="sgd", micro=None, rho=0.1), "rho is not accepted by 'sgd'"),
    (dict(algorithm="sam", micro=None, rho=None), "rho is required by 'sam'"),
    (dict(rho=-0.1), "rho must be .*>= 0"),
    (dict(eta=0.0), "eta must be a positive number"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(sampling="bootstrap"), "sampling must be one of"),
    (dict(batch=9, sampling="without-replacement"), "at most the number of samples"),
    (dict(x0=[0.0, 0.0, 0.0]), "x0 must have shape"),
    (dict(lam=-1.0, algorithm="rw-sam", micro=None), "lam must be"),
    (dict(lam=1.0), "lam is not accepted"),
    (dict(algorithm="m-sam", micro=None), "micro is required"),
    (dict(x0=[float("inf"), 0.0]), "x0 must be finite"),
    (dict(diverge_at=0.0), "diverge_at must be a positive number"),
])
def test_bad_arguments_raise_before_any_work(kwargs, match):
    problem = LogisticRegression(torch.randn(8, 2, dtype=torch.float64), torch.tensor([0., 1.] * 4))
    args = dict(algorithm="m-usam", eta=0.1, rho=0.1, batch=4, micro=2, x0=[0.0, 0.0], steps=2,
                chains=3, seed=0)
    args.update(kwargs)
    algorithm = args.pop("algorithm")
    with pytest.raises(ValueError, match=match):
        ensemble.run(problem, algorithm, **args)
