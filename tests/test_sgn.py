"""SGN statistics against hand computation and explicit matrices on small problems."""

import numpy as np
import pytest
import sympy
import torch
from torch import nn

from sdesam import sgn
from sdesam.problems import from_sympy


def mse(outputs, targets):
    return 0.5 * (outputs.squeeze(-1) - targets) ** 2


def test_lanczos_matches_dense_eigenvalues():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    sym = a @ a.T
    top = sgn.lanczos_top_eigenvalues(lambda v: sym @ v, 40, 3, iterations=40,
                                      generator=torch.Generator().manual_seed(1))
    assert torch.allclose(top, torch.linalg.eigvalsh(sym).flip(0)[:3], rtol=1e-9)


@pytest.mark.parametrize("kwargs, word", [(dict(k=0), "k"), (dict(k=2, iterations=1), "iterations")])
def test_lanczos_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        sgn.lanczos_top_eigenvalues(lambda v: v, 5, **kwargs)


def test_covariance_spectrum_without_forming_v():
    grads = torch.randn(50, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    centred = grads - grads.mean(0)
    dense = torch.linalg.eigvalsh(centred.T @ centred / 50).flip(0)
    top = sgn.covariance_top_eigenvalues(grads, 4, iterations=49)
    assert torch.allclose(top, dense[:4], rtol=1e-8)


def test_problem_statistics_by_hand():
    # f_i = |x - c_i|^2 / 2: g_i - g = c_bar - c_i, so V = covariance of the centres
    x1, x2 = sympy.symbols("x1 x2")
    centres = [(1, 0), (-1, 0), (0, 2), (0, -2)]
    problem = from_sympy([((x1 - a) ** 2 + (x2 - b) ** 2) / 2 for a, b in centres], [x1, x2])
    point = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    out = sgn.problem_statistics(problem, point)
    assert out["trace_V"].item() == pytest.approx(0.5 + 2.0)          # diag(2/4, 8/4)
    assert out["top_eigenvalue"].item() == pytest.approx(2.0)
    expected = [np.hypot(0.5 - a, -1.0 - b) for a, b in centres]
    assert out["grad_norms"][0].tolist() == pytest.approx(expected)


def test_trace_along_path_matches_direct_evaluation():
    x = sympy.Symbol("x")
    problem = from_sympy([x**2 * (1 + k) / 2 for k in (-1, 0, 1)], [x])   # g_i = (1+k) x
    path = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3, 1)
    mean, stderr = sgn.trace_along_path(problem, path, chunk=3)
    traces = (2 / 3) * path[..., 0] ** 2                                 # var of (1+k) x
    assert torch.allclose(mean, traces.mean(1))
    assert torch.allclose(stderr, traces.std(1) / np.sqrt(3))


def test_module_statistics_by_hand_on_linear_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    inputs = torch.randn(7, 3, dtype=torch.float64)
    targets = torch.randn(7, dtype=torch.float64)
    out = sgn.module_statistics(model, mse, inputs, targets, top=2, iterations=3)
    w = model.weight.detach()[0].numpy()
    X, y = inputs.numpy(), targets.numpy()
    g = (X @ w - y)[:, None] * X                                        # per-sample gradients
    c = g - g.mean(0)
    V = c.T @ c / 7
    assert out["trace_V"].item() == pytest.approx(np.trace(V))
    assert out["grad_norms"].numpy() == pytest.approx(np.linalg.norm(g, axis=1))
    assert out["top_eigenvalues"].numpy() == pytest.approx(np.linalg.eigvalsh(V)[::-1][:2])


def test_hessian_top_eigenvalue_against_explicit_hessian():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    inputs = torch.randn(20, 4, dtype=torch.float64)
    targets = torch.randn(20, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def flat_loss(flat):
        pieces = [piece.reshape(p.shape) for piece, p in zip(flat.split(sizes), params)]
        out = torch.func.functional_call(model, dict(zip(names, pieces)), (inputs,))
        return mse(out, targets).mean()

    dense = torch.autograd.functional.hessian(flat_loss, torch.cat([p.reshape(-1) for p in params]))
    top = sgn.hessian_top_eigenvalues(model, mse, inputs, targets, 2, iterations=sum(sizes))
    assert torch.allclose(top, torch.linalg.eigvalsh(dense).flip(0)[:2], rtol=1e-7, atol=1e-10)


def test_finite_difference_norms_against_exact_norms():
    """RW-SAM's one-forward estimator: unbiased in the mean square, noisy for one draw."""
    from sdesam.experiment.digits import per_sample_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    inputs, targets = torch.randn(64, 8), torch.randint(0, 3, (64,))
    averaged = sgn.finite_difference_norm_error(model, per_sample_loss, inputs, targets,
                                                delta=1e-3, draws=100)
    single = sgn.finite_difference_norm_error(model, per_sample_loss, inputs, targets,
                                              delta=1e-3, draws=1)
    assert abs(averaged["relative_bias"]) < 0.05
    assert averaged["relative_spread"] < 0.15 and averaged["rank_correlation"] > 0.7
    # a single Rademacher draw estimates |g_i| only up to a factor |z^T g_i| / |g_i|
    assert single["relative_spread"] > 0.3
    with pytest.raises(ValueError, match="draws"):
        sgn.finite_difference_norm_error(model, per_sample_loss, inputs, targets, delta=1e-3, draws=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_statistics_on_cuda_match_cpu():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    inputs, targets = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    cpu = sgn.module_statistics(model, mse, inputs, targets, top=1)
    gpu = sgn.module_statistics(model.cuda(), mse, inputs.cuda(), targets.cuda(), top=1)
    assert torch.allclose(gpu["trace_V"].cpu(), cpu["trace_V"])
    assert torch.allclose(gpu["top_eigenvalues"].cpu(), cpu["top_eigenvalues"])
    top_cpu = sgn.hessian_top_eigenvalues(model.cpu(), mse, inputs, targets, iterations=20)
    top_gpu = sgn.hessian_top_eigenvalues(model.cuda(), mse, inputs.cuda(), targets.cuda(),
                                          iterations=20)
    assert torch.allclose(top_gpu.cpu(), top_cpu, rtol=1e-6)
