"""Problems: autograd quantities against closed forms and hand computation."""

import pickle

import pytest
import sympy
import torch

from sdesam.problems import (LinearRegression, LogisticRegression, Quadratic, TeacherStudent,
                             from_sympy)
from sdesam.validation import InputError

torch.manual_seed(0)


def random_quadratic(n: int = 5, d: int = 3, seed: int = 0) -> Quadratic:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, d, generator=gen, dtype=torch.float64)
    return Quadratic(a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64),
                     torch.randn(n, d, generator=gen, dtype=torch.float64))


def generic_grads(problem, x):
    """Per-sample gradients through the base class's autograd path (ignoring overrides)."""
    from sdesam.problems.base import Problem
    return Problem.sample_grads(problem, x)


def test_quadratic_closed_forms_match_autograd_and_hand_computation():
    q = random_quadratic()
    x = torch.randn(4, 3, dtype=torch.float64)
    diff = x[:, None, :] - q.centers
    hand = torch.stack([torch.stack([q.hessians[i] @ diff[c, i] for i in range(5)]) for c in range(4)])
    assert torch.allclose(q.sample_grads(x), hand)
    assert torch.allclose(generic_grads(q, x), hand)
    v = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(q.hvp(x, v), v @ q.mean_hessian().T)
    idx = torch.tensor([[0, 0, 2]] * 4)
    hess = (2 * q.hessians[0] + q.hessians[2]) / 3
    assert torch.allclose(q.hvp(x, v, idx), v @ hess.T)
    g = hand.mean(1)
    assert torch.allclose(q.grad(x), g)
    assert torch.allclose(q.grad(x, idx), (2 * hand[:, 0] + hand[:, 2]) / 3)
    cov = torch.stack([sum(torch.outer(hand[c, i] - g[c], hand[c, i] - g[c]) for i in range(5)) / 5
                       for c in range(4)])
    assert torch.allclose(q.noise_covariance(x), cov)
    assert torch.allclose(q.trace_V(x), cov.diagonal(dim1=-2, dim2=-1).sum(-1))


@pytest.mark.parametrize("make", [
    lambda: LinearRegression(torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)),
    lambda: LogisticRegression(torch.randn(6, 3, dtype=torch.float64),
                               (torch.rand(6) < 0.5).double(), l2=0.1),
])
def test_regression_closed_form_gradients_equal_autograd(make):
    problem = make()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    assert torch.allclose(problem.sample_grads(x), generic_grads(problem, x))


@pytest.mark.parametrize("make", [
    random_quadratic,
    lambda: LogisticRegression(torch.randn(4, 2, dtype=torch.float64), torch.tensor([0., 1., 1., 0.])),
    lambda: TeacherStudent(n=4, inputs=2, hidden=2, noise=0.1),
])
def test_sympy_form_round_trips_to_the_same_losses_and_gradients(make):
    problem = make()
    twin = from_sympy(*problem.sympy_form())
    x = torch.randn(3, problem.dim, dtype=torch.float64)
    assert torch.allclose(twin.sample_losses(x), problem.sample_losses(x), atol=1e-6)
    assert torch.allclose(twin.sample_grads(x), problem.sample_grads(x), atol=1e-6)


def test_from_sympy_gradients_equal_sympy_differentiation():
    x, y = sympy.symbols("x y")
    losses = [x**2 * y + sympy.exp(y), sympy.cos(x) + y**4 / 4, sympy.Integer(3)]
    problem = from_sympy(losses, [x, y])
    point = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    expected = [[float(sympy.diff(f, v).subs({x: 0.3, y: -0.7})) for v in (x, y)] for f in losses]
    assert torch.allclose(problem.sample_grads(point)[0], torch.tensor(expected, dtype=torch.float64))
    assert problem.sample_losses(torch.zeros(5, 2)).shape == (5, 3)


def test_teacher_point_is_a_minimum_without_label_noise():
    problem = TeacherStudent(n=10, inputs=3, hidden=2, seed=1)
    assert problem.dim == 8
    assert float(problem.loss(problem.teacher_point)) < 1e-20
    assert float(problem.grad(problem.teacher_point).abs().max()) < 1e-10


def test_dtype_follows_the_point():
    q = random_quadratic()
    assert q.sample_grads(torch.zeros(2, 3, dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize("bad, match", [
    (lambda q: q.grad(torch.zeros(2, 4, dtype=torch.float64)), "last dimension"),
    (lambda q: q.grad(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([[0, 9]] * 2)), r"\[0, 5\)"),
    (lambda q: q.grad(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([[0.5]] * 2)), "integer"),
    (lambda q: Quadratic(torch.randn(2, 3, 3), torch.zeros(2, 3)), "symmetric"),
    (lambda q: Quadratic(torch.eye(3).expand(2, 3, 3), torch.zeros(3, 3)), "centers"),
    (lambda q: LogisticRegression(torch.zeros(2, 2), torch.tensor([0.0, 2.0])), "labels"),
    (lambda q: from_sympy([sympy.Symbol("a") * sympy.Symbol("x")], [sympy.Symbol("x")]), "not variables"),
])
def test_bad_input_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        bad(random_quadratic())


@pytest.mark.parametrize("make", [
    random_quadratic,
    lambda: LinearRegression(torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)),
    lambda: LogisticRegression(torch.randn(6, 3, dtype=torch.float64),
                               (torch.rand(6) < 0.5).double(), l2=0.3),
])
def test_closed_form_hessian_sums_equal_the_generic_vjp(make):
    from sdesam.problems.base import Problem
    problem = make()
    x = torch.randn(4, problem.dim, dtype=torch.float64)
    u = torch.randn(4, problem.n, problem.dim, dtype=torch.float64)
    grads, closed = problem.sample_grads_with_hvp(x)
    generic_grads, generic = Problem.sample_grads_with_hvp(problem, x)
    assert torch.allclose(grads, generic_grads)
    assert torch.allclose(closed(u), generic(u))
    # hand computation: sum_i H_i u_i from the mean Hessian when all u_i are equal
    same = u[:, :1].expand_as(u)
    assert torch.allclose(closed(same), problem.n * problem.hvp(x, u[:, 0]))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, argument", [
    (lambda: LogisticRegression(torch.tensor([[0.0, NAN], [1.0, 2.0]]), torch.tensor([0.0, 1.0])), "X"),
    (lambda: LinearRegression(torch.ones(3, 2), torch.tensor([0.0, INF, 1.0])), "y"),
    (lambda: LinearRegression(torch.tensor([[1.0], [-INF]]), torch.zeros(2)), "X"),
    (lambda: Quadratic(torch.eye(2).expand(2, 2, 2).clone(), torch.tensor([[0.0, 1.0], [NAN, 0.0]])),
     "centers"),
    (lambda: Quadratic(torch.full((1, 1, 1), INF), torch.zeros(1, 1)), "hessians"),
    (lambda: LogisticRegression(torch.ones(2, 2), torch.tensor([0.0, 1.0]), l2=INF), "l2"),
    (lambda: TeacherStudent(n=4, noise=INF), "noise"),
])
def test_non_finite_data_is_refused_at_construction_naming_the_argument(make, argument):
    with pytest.raises(InputError, match=rf"^{argument} must be"):
        make()


def test_module_problem_refuses_non_finite_data():
    from sdesam.implicit import ModuleProblem
    model = torch.nn.Linear(2, 1)
    loss = lambda out, t: (out.squeeze(-1) - t) ** 2
    with pytest.raises(InputError, match="^inputs must be finite"):
        ModuleProblem(model, loss, torch.tensor([[NAN, 0.0]]), torch.zeros(1))
    assert ModuleProblem(model, loss, torch.zeros(3, 2), torch.zeros(3)).n == 3


@pytest.mark.parametrize("losses, culprit", [
    (lambda x, y: [sympy.Abs(x) + y**2, x**2 + y**2], "Abs"),
    (lambda x, y: [sympy.Max(x, 0) ** 2 + y**2], "Max"),
    (lambda x, y: [sympy.Heaviside(x) * x**2 + y**2], "Heaviside"),
])
def test_from_sympy_refuses_non_smooth_losses_like_derive(losses, culprit):
    """One policy for the simulation and the derivation: the same check, the same message."""
    from sdesam.symbolic import derive
    x, y = sympy.symbols("x y")
    with pytest.raises(InputError, match=f"not smooth.*{culprit}") as simulated:
        from_sympy(losses(x, y), [x, y])
    with pytest.raises(InputError) as derived:
        derive("usam", losses(x, y), [x, y], batch=1)
    assert str(simulated.value) == str(derived.value)


def test_from_sympy_refuses_a_variable_no_loss_uses():
    x, y = sympy.symbols("x y")
    with pytest.raises(InputError, match="variables y occur in none"):
        from_sympy([x**2, (x - 1) ** 2], [x, y])


def test_the_feature_form_of_the_regressions_gives_their_gradients_and_hessians():
    """f_i = phi_i(a_i . x) + ridge/2 |x|^2: grad f_i = phi' a_i + ridge x, H_i = phi'' a_i a_i^T
    + ridge I, as autograd and the closed forms have them; other problems expose none."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    u = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    for problem in (LinearRegression(features, torch.randn(5, generator=gen, dtype=torch.float64)),
                    LogisticRegression(features, torch.tensor([0.0, 1, 1, 0, 1]), l2=0.2)):
        form = pickle.loads(pickle.dumps(problem)).feature_form()
        slopes, curvatures = form.derivatives(x @ form.features.T)
        curvatures = torch.ones_like(slopes) if curvatures is None else curvatures
        grads = slopes.unsqueeze(-1) * form.features + form.ridge * x.unsqueeze(-2)
        torch.testing.assert_close(grads, problem.sample_grads(x))
        along = curvatures * (u * form.features).sum(dim=-1)
        hvp = along @ form.features + form.ridge * u.sum(dim=-2)
        torch.testing.assert_close(hvp, problem.sample_grads_with_hvp(x)[1](u))
    quadratic = Quadratic(torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone(),
                          torch.zeros(3, 2, dtype=torch.float64))
    assert quadratic.feature_form() is None
