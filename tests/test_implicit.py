"""The implicit-regularisation diagnostic: exact against Monte Carlo, the m-USAM closed form,
the equivalent m of m-SAM, RW-SAM at lam = 0, the readings of issue 9 in the reference rule."""

import math

import pytest
import torch
from torch import nn

from sdesam import implicit
from sdesam.algorithms import direction, get_rule, sampling_factor
from sdesam.implicit import Spec
from sdesam.problems import LogisticRegression, Problem, TeacherStudent


def logistic(n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).double()
    return LogisticRegression(X, y, l2=0.1), torch.randn(d, generator=g, dtype=torch.float64) * 0.3


def by_rule(records):
    return {(r["rule"], r["micro"], r["lam"]): r for r in records}


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_m_usam_noise_induced_drift_is_the_closed_form(sampling):
    problem, x = logistic(n=5)
    x = x.requires_grad_(True)
    grad_trace = torch.autograd.grad(problem.trace_V(x), x)[0]
    x = x.detach()
    for m in (1, 2, 4):
        exact = implicit.enumerate_batches(problem.n, 4, sampling)
        drift = implicit.noise_induced_drift(problem, x, Spec.of("m-usam", m), exact)
        closed = -float(sampling_factor(m, problem.n, sampling)) / 2 * grad_trace
        assert torch.allclose(drift, closed, atol=1e-10), (m, drift, closed)


def test_exact_and_monte_carlo_agree_within_their_errors():
    problem, x = logistic(n=7, seed=2)
    specs = [Spec.of("sam"), Spec.of("m-sam", 1), Spec.of("rw-sam", lam=3.0),
             Spec.of("rw-sam-wd", lam=3.0), Spec.of("rw-sam-draw", lam=3.0), Spec.of("usam")]
    exact = by_rule(implicit.diagnose(problem, x, specs, implicit.enumerate_batches(7, 3, "with-replacement")))
    sampled = implicit.sample_batches(7, 3, 3000, "with-replacement", torch.Generator().manual_seed(1))
    mc = by_rule(implicit.diagnose(problem, x, specs, sampled, draws=2, chunk=3000))
    for key, record in exact.items():
        assert record["push_stderr"] == 0.0 and record["exact"]
        estimate = mc[key]
        assert estimate["push_stderr"] > 0
        assert abs(estimate["push"] - record["push"]) < 4 * estimate["push_stderr"], key
        assert abs(estimate["bias"] - record["bias"]) < 4 * estimate["bias_stderr"] + 1e-12, key


def test_local_quadratic_model_gives_the_problems_first_order_terms():
    problem = TeacherStudent(n=8, inputs=2, hidden=2, noise=0.3, seed=1)
    x = torch.randn(problem.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    batches = implicit.sample_batches(8, 4, 50, "without-replacement", torch.Generator().manual_seed(0))
    specs = [Spec.of("m-sam", 2), Spec.of("rw-sam-wr", lam=2.0), Spec.of("usam")]
    direct = implicit.diagnose(problem, x, specs, batches, local_model=False)
    local = implicit.diagnose(problem, x, specs, batches, local_model=True)
    for a, b in zip(direct, local):
        assert math.isclose(a["push"], b["push"], rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(a["drift_norm"], b["drift_norm"], rel_tol=1e-9, abs_tol=1e-12)


def test_equivalent_m_of_m_sam_is_m_and_rw_sam_at_lam_zero_is_sam():
    problem, x = logistic(n=8)
    batch = 4
    specs = [Spec.of("m-sam", m) for m in implicit.divisors(batch)]
    specs += [Spec.of("sam"), Spec.of("rw-sam", lam=0.0), Spec.of("rw-sam-wd", lam=0.0)]
    records = implicit.add_equivalent_m(implicit.diagnose(
        problem, x, specs, implicit.sample_batches(8, batch, 500, "without-replacement",
                                                   torch.Generator().manual_seed(0))))
    rows = by_rule(records)
    for m in implicit.divisors(batch):
        assert rows[("m-sam", m, 0.0)]["equivalent_m"] == pytest.approx(m)
    sam = rows[("sam", None, 0.0)]
    assert sam["equivalent_m"] == pytest.approx(batch)
    for name in ("rw-sam", "rw-sam-wd"):
        assert rows[(name, None, 0.0)]["push"] == pytest.approx(sam["push"], rel=1e-12)
        assert rows[(name, None, 0.0)]["ess"] == pytest.approx(batch)


def test_rank_one_noise_at_a_critical_point_caps_plain_descent_readings_at_sam():
    """1-D losses f_i = x^2/2 + a_i (x + x^2/2), symmetric scores a: at the critical point 0,
    g_i = a_i and H_i = 1 + a_i, so a perturbation of sign s(S) pushes by E[s(S) a_S] <= E|a_S|,
    SAM's push, for every weighting and every draw."""
    scores = torch.tensor([-2.9, -1.3, -0.5, 0.5, 1.3, 2.9], dtype=torch.float64)  # no 3 sum to 0

    class RankOne(Problem):
        n, dim = 6, 1

        def sample_losses(self, x):
            u = x[..., :1]
            return 0.5 * u**2 + scores * (u + u**2 / 2)

    problem = RankOne()
    x = torch.zeros(1, dtype=torch.float64)
    exact = implicit.enumerate_batches(6, 3, "with-replacement")
    specs = [Spec.of("sam")] + [Spec.of("rw-sam", lam=lam) for lam in (0.5, 2.0, 20.0)]
    specs += [Spec.of("rw-sam-draw", lam=lam) for lam in (0.5, 20.0)]
    rows = implicit.diagnose(problem, x, specs, exact)
    assert rows[0]["critical"]
    sam_push = rows[0]["push"]
    assert sam_push > 0
    pushes = [r["push"] for r in rows[1:4]]
    assert all(p <= sam_push + 1e-12 for p in pushes)
    assert pushes[0] >= pushes[1] >= pushes[2]          # larger lam: further from m-SAM
    assert all(r["push"] <= sam_push + 1e-12 for r in rows[4:])


def test_readings_in_the_reference_rule():
    problem, x = logistic(n=5)
    part = torch.tensor([0, 2, 3])
    rho, lam = 0.3, 2.0
    norms = problem.sample_grads(x)[part].norm(dim=-1)
    p = torch.softmax(lam * norms, 0)
    weights = torch.zeros(problem.n, dtype=torch.float64).scatter_add(0, part, p)

    def weighted(point, idx):
        return problem.weighted_grad(point, weights)

    ascent = weighted(x, part)
    point = x + rho * ascent / ascent.norm()
    common = dict(grad=problem.grad, norm=torch.linalg.norm, reweighted_grad=weighted,
                  weighted_grad=weighted, draw=lambda idx: idx[1:2])
    assert torch.allclose(direction("rw-sam", x, [part], rho, **common), problem.grad(point, part))
    assert torch.allclose(direction("rw-sam-wd", x, [part], rho, **common), weighted(point, part))
    assert torch.allclose(direction("rw-sam-wr", x, [part], rho, **common),
                          problem.grad(x, part) + weighted(point, part) - weighted(x, part))
    one = problem.grad(x, part[1:2])
    drawn = x + rho * one / one.norm()
    assert torch.allclose(direction("rw-sam-draw", x, [part], rho, **common), problem.grad(drawn, part))
    with pytest.raises(ValueError, match="weighted_grad"):
        direction("rw-sam-wd", x, [part], rho, grad=problem.grad, norm=torch.linalg.norm,
                  reweighted_grad=weighted)
    assert get_rule("rw-sam-wr").extended and not get_rule("rw-sam").extended


def test_module_problem_matches_per_sample_gradients():
    from sdesam import per_sample

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    inputs = torch.randn(6, 3, dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0, 1, 0])

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out, y, reduction="none")

    problem = implicit.ModuleProblem(model, loss_fn, inputs, targets)
    x = problem.point()
    assert torch.allclose(problem.sample_grads(x),
                          per_sample.per_sample_grads(model, loss_fn, inputs, targets))
    batches = implicit.enumerate_batches(6, 2, "without-replacement")
    specs = [Spec.of("sam"), Spec.of("m-sam", 1), Spec.of("rw-sam-wr", lam=1.0)]
    on_module = implicit.diagnose(problem, x, specs, batches)
    on_local = implicit.diagnose(problem, x, specs, batches, local_model=True)
    for a, b in zip(on_module, on_local):
        assert math.isclose(a["push"], b["push"], rel_tol=1e-8, abs_tol=1e-12)


def test_module_problem_sample_grads_are_each_samples_own_and_equal_the_jacobian(monkeypatch):
    """ModuleProblem's per-sample gradients (each sample's loss differentiated alone, linear in
    n) equal the Jacobian of all n losses, for a leading batch of points on the shared data and
    for rows on their own batches, and so does the Hessian-vector map built on them; the
    network is evaluated in eval mode (BatchNorm's running statistics, no dropout) and its
    flags are restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(4, 2)).double()
    model[0].bias.requires_grad_(False)                          # a frozen parameter
    inputs = torch.randn(6, 3, dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0, 1, 0])
    model(inputs)                                                 # running statistics move

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out, y, reduction="none")

    problem = implicit.ModuleProblem(model, loss_fn, inputs, targets)
    x = problem.point() + 0.1 * torch.randn(2, 3, problem.dim, dtype=torch.float64)
    jacobian = torch.func.jacrev(problem.sample_losses)
    expected = torch.stack([torch.stack([jacobian(point) for point in row]) for row in x])
    view = problem.restrict(torch.tensor([[0, 2, 4], [1, 3, 5], [5, 5, 0]]))
    points = x.reshape(-1, problem.dim)[:3]
    rows_jacobian = torch.func.jacrev(view.sample_losses)(points)            # [K, B, K, P]
    rows_expected = torch.stack([rows_jacobian[k, :, k] for k in range(3)])
    u = torch.randn(6, problem.dim, dtype=torch.float64)
    expected_hvp = torch.func.vjp(jacobian, x[0, 0])[1](u)[0]

    def forbidden(*args, **kwargs):
        raise AssertionError("the n^2 Jacobian of all losses was taken")

    monkeypatch.setattr("sdesam.problems.base.jacrev", forbidden)
    assert torch.allclose(problem.sample_grads(x), expected)
    assert torch.allclose(view.sample_grads(points), rows_expected)
    grads, hvp = problem.sample_grads_with_hvp(x[0, 0])
    assert torch.allclose(grads, expected[0, 0]) and torch.allclose(hvp(u), expected_hvp)
    assert model.training and all(module.training for module in model)
    with pytest.raises(ValueError, match=r"x must have shape \[3, \d+\], one point per row"):
        view.sample_grads(points[0])


def test_equivalent_m_interpolation_and_bounds():
    curve = [(1, 4.0, 0.1), (2, 2.0, 0.1), (4, 1.0, 0.1)]
    m, se, bound = implicit.equivalent_m(3.0, 0.1, curve)
    assert bound is None and 1 < m < 2 and se > 0
    assert implicit.equivalent_m(5.0, 0.1, curve)[2] == "below_1"
    assert implicit.equivalent_m(0.5, 0.1, curve)[2] == "above_B"
    m, _, _ = implicit.equivalent_m_continuous(0.25, 0.0, 1.0, 10, "with-replacement")
    assert m == pytest.approx(2.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="micro"):
        Spec.of("m-sam")
    with pytest.raises(ValueError, match="lam"):
        Spec.of("rw-sam", lam=-1.0)
    with pytest.raises(ValueError, match="exceeds"):
        implicit.enumerate_batches(64, 8, "with-replacement")
