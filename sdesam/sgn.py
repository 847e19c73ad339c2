"""Statistics of the stochastic gradient noise (SGN): tr V, per-sample gradient norms, spectra.

V(x) = (1/N) sum_i (g_i - g)(g_i - g)^T is the per-sample gradient-noise covariance. For a
problem from :mod:`sdesam.problems` the per-sample gradients come from the problem itself; for an
``nn.Module`` from :mod:`sdesam.per_sample` (exact, ``torch.func``, chunked). The top of V's
spectrum and of the Hessian's is found by Lanczos iteration on matrix-vector products, so
neither V nor the Hessian of a network is ever formed: ``V v = G_c^T (G_c v) / N`` with the
centred per-sample gradient matrix ``G_c [N, P]``, and ``H v`` by forward-over-reverse
differentiation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from . import per_sample
from .problems.base import Problem
from .stats import mean_and_stderr
from .validation import InputError, int_at_least, positive_int

LossFn = per_sample.LossFn
MatVec = Callable[[torch.Tensor], torch.Tensor]


def lanczos_top_eigenvalues(matvec: MatVec, dim: int, k: int = 1, *, iterations: int = 30,
                            generator: torch.Generator | None = None,
                            dtype: torch.dtype = torch.float64,
                            device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``k`` largest eigenvalues (descending) of a symmetric operator given by ``matvec``.

    Lanczos with full re-orthogonalisation for ``min(iterations, dim)`` steps from a seeded
    random start; the extreme Ritz values converge first, so a few tens of steps give the top
    few eigenvalues of a network-sized operator to many digits.
    """
    positive_int("dim", dim)
    if positive_int("k", k) > dim:
        raise InputError(f"k must be an integer in [1, dim={dim}]; got {k!r}")
    int_at_least("iterations", iterations, k)
    steps = min(iterations, dim)
    draw_on = generator.device if generator is not None else device
    start = torch.randn(dim, generator=generator, dtype=dtype, device=draw_on).to(device)
    basis = [start / start.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j]).to(dtype)
        alpha = torch.dot(w, basis[j])
        alphas.append(alpha)
        stacked = torch.stack(basis)
        w = w - stacked.T @ (stacked @ w)           # full re-orthogonalisation (twice is enough)
        w = w - stacked.T @ (stacked @ w)
        beta = w.norm()
        if j == steps - 1 or beta <= 1e-12 * max(1.0, float(alpha.abs())):
            break
        betas.append(beta)
        basis.append(w / beta)
    size = len(alphas)
    tridiagonal = torch.diag(torch.stack(alphas))
    if size > 1:
        off = torch.stack(betas[: size - 1])
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(tridiagonal).flip(0)
    return ritz[: min(k, size)]


def covariance_matvec(grads: torch.Tensor) -> MatVec:
    """``v -> V v`` for the covariance of the rows of ``grads [N, P]``, without forming V."""
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise InputError(f"grads must be a [N, P] matrix of per-sample gradients; got {tuple(grads.shape)}")
    centred = grads - grads.mean(dim=0, keepdim=True)
    count = grads.shape[0]
    return lambda v: centred.T @ (centred @ v.to(centred)) / count


def covariance_top_eigenvalues(grads: torch.Tensor, k: int = 1, *, iterations: int = 30,
                               seed: int = 0) -> torch.Tensor:
    """Top ``k`` eigenvalues of the covariance V of per-sample gradients ``grads [N, P]``."""
    generator = torch.Generator(device=grads.device).manual_seed(seed)
    return lanczos_top_eigenvalues(covariance_matvec(grads.double()), grads.shape[1], k,
                                   iterations=iterations, generator=generator,
                                   device=grads.device)


# ---------------------------------------------------------------------- problems (x in R^d)
def problem_statistics(problem: Problem, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """tr V, the per-sample gradient norms ``[..., N]`` and the largest eigenvalue of V at
    points ``x [..., d]`` of a problem (V is only d x d here, so it is formed exactly)."""
    grads = problem.sample_grads(x)
    centred = grads - grads.mean(dim=-2, keepdim=True)
    covariance = centred.transpose(-1, -2) @ centred / problem.n
    return {"trace_V": covariance.diagonal(dim1=-2, dim2=-1).sum(-1),
            "grad_norms": grads.norm(dim=-1),
            "top_eigenvalue": torch.linalg.eigvalsh(covariance)[..., -1]}


def trace_along_path(problem: Problem, path: torch.Tensor,
                     chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over chains of tr V and its standard error along an ensemble ``path [T, K, d]``.

    Evaluated ``chunk`` time steps at a time; returns two ``[T]`` tensors.
    """
    if path.ndim != 3 or path.shape[-1] != problem.dim:
        raise InputError(f"path must have shape [T, chains, {problem.dim}]; got {tuple(path.shape)}")
    traces = torch.cat([problem.trace_V(path[s:s + chunk]) for s in range(0, path.shape[0], chunk)])
    mean, stderr = mean_and_stderr(traces.cpu().numpy(), axis=1)
    return torch.as_tensor(mean), torch.as_tensor(stderr)


# ---------------------------------------------------------------------- networks
def module_statistics(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                      targets: torch.Tensor, *, top: int = 0, iterations: int = 30,
                      chunk_size: int = per_sample.DEFAULT_CHUNK,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """tr V, the per-sample gradient norms ``[N]`` and (``top`` > 0) the top eigenvalues of V
    of a network on ``inputs``/``targets`` (the full training set or a fixed probe set).

    The per-sample gradients are held as one ``[N, P]`` matrix (exact, eval mode: see
    :mod:`sdesam.per_sample`); V itself (``P x P``) is never formed.
    """
    grads = per_sample.per_sample_grads(model, loss_fn, inputs, targets, chunk_size).double()
    centred = grads - grads.mean(dim=0, keepdim=True)
    result = {"trace_V": centred.square().sum() / grads.shape[0], "grad_norms": grads.norm(dim=1)}
    if top:
        result["top_eigenvalues"] = covariance_top_eigenvalues(grads, top, iterations=iterations,
                                                               seed=seed)
    return result


def hessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                            targets: torch.Tensor, k: int = 1, *, iterations: int = 30,
                            seed: int = 0) -> torch.Tensor:
    """Top ``k`` eigenvalues of the Hessian of the mean loss of ``model`` on the given data.

    Hessian-vector products by forward-over-reverse differentiation (``jvp`` of ``grad``) in
    the parameters' dtype; Lanczos in float64. Evaluated in eval mode, like the SGN statistics.
    """
    params = per_sample.trainable_parameters(model)
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update(dict(model.named_buffers()))
    primal = {n: p.detach() for n, p in params.items()}

    def mean_loss(theta: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, (theta, constants), (inputs,)), targets).mean()

    gradient = grad(mean_loss)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        pieces = v.split(sizes)
        tangent = {n: piece.reshape(shape).to(primal[n])
                   for n, piece, shape in zip(names, pieces, shapes)}
        _, product = jvp(gradient, (primal,), (tangent,))
        return torch.cat([product[n].reshape(-1) for n in names]).double()

    first = next(iter(primal.values()))
    generator = torch.Generator(device=first.device).manual_seed(seed)
    with per_sample._eval_mode(model):
        return lanczos_top_eigenvalues(matvec, sum(sizes), k, iterations=iterations,
                                       generator=generator, device=first.device)


def finite_difference_norm_error(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                                 targets: torch.Tensor, *, delta: float, draws: int = 1,
                                 seed: int = 0) -> dict[str, float]:
    """Bias and spread of RW-SAM's finite-difference per-sample gradient norms.

    Averages the squared estimate of :func:`sdesam.optim.estimate_grad_norms` over ``draws``
    Rademacher directions (E_z[(z^T g)^2] = |g|^2) and compares its square root with the exact
    norms: ``relative_bias`` = mean of (estimate - exact)/exact, ``relative_spread`` = their
    standard deviation, ``rank_correlation`` = Spearman correlation (what the Gibbs weights use).
    """
    from .optim import estimate_grad_norms

    positive_int("draws", draws)
    exact = per_sample.per_sample_grad_norms(model, loss_fn, inputs, targets).double()
    generator = torch.Generator().manual_seed(seed)
    squares = torch.zeros_like(exact)
    for _ in range(draws):
        estimate = estimate_grad_norms(model, loss_fn, inputs, targets, delta, generator=generator)
        squares += estimate.detach().double().square() / draws
    relative = (squares.sqrt() - exact) / exact
    ranks = torch.stack([exact.argsort().argsort(), squares.argsort().argsort()]).double()
    return {"relative_bias": float(relative.mean()), "relative_spread": float(relative.std()),
            "rank_correlation": float(torch.corrcoef(ranks)[0, 1])}
