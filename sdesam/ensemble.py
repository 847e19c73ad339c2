"""Many independent chains of a discrete SAM-family optimizer, vectorised over the chains.

The update rules come from :mod:`sdesam.algorithms` (one definition for the whole package);
this module evaluates them on torch tensors of shape ``[chains, d]`` with per-chain
mini-batches ``[chains, B]``. :func:`step` performs one update for given batch indices (so
tests and other code can drive it with their own batches) and :func:`run` draws the batches
from a seeded generator and iterates.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from .algorithms import check_rho, check_sampling, check_sizes, get_rule, reweighted_gradient, scaled
from .problems.base import Problem


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive integer, else raise a ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def check_eta(eta: Any) -> float:
    """Return the learning rate ``eta`` as a float if it is a positive number, else raise."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 0:
        raise ValueError(f"eta must be a positive number; got {eta!r}")
    return float(eta)


def check_lam(lam: Any) -> float:
    """Return RW-SAM's inverse temperature ``lam`` if it is a non-negative number, else raise."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a non-negative number; got {lam!r}")
    return float(lam)


def start_points(x0: Any, chains: int, dim: int, device: str | torch.device) -> torch.Tensor:
    """The ``[chains, d]`` starting points from ``x0`` of shape ``[d]`` (shared) or
    ``[chains, d]``; a floating tensor keeps its dtype, anything else becomes float64."""
    if isinstance(x0, torch.Tensor) and x0.is_floating_point():
        x0 = x0.to(device)
    else:
        x0 = torch.as_tensor(x0, dtype=torch.float64, device=device)
    if x0.shape not in ((dim,), (chains, dim)):
        raise ValueError(f"x0 must have shape [{dim}] or [{chains}, {dim}]; got {tuple(x0.shape)}")
    return x0.expand(chains, dim).clone()


def step(problem: Problem, algorithm: str, x: torch.Tensor, batch_idx: torch.Tensor, *,
         eta: float, rho: float, micro: int | None = None, lam: float = 1.0) -> torch.Tensor:
    """One update ``x - eta * G(x)`` of ``algorithm`` for every chain: ``x [..., d]`` with the
    batch indices ``batch_idx [..., B]`` of each chain. For the m-rules the micro-batches are
    the consecutive blocks of ``micro`` indices of the batch."""
    rule = get_rule(algorithm)
    check_eta(eta)
    check_rho(rho)
    check_lam(lam)
    batch_idx = torch.as_tensor(batch_idx, device=x.device)
    if batch_idx.dim() == 0 or batch_idx.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"batch_idx must have shape [{', '.join(map(str, x.shape[:-1]))}, B] "
                         f"to match x of shape {tuple(x.shape)}; got {tuple(batch_idx.shape)}")
    micro = check_sizes(rule.name, int(batch_idx.shape[-1]), micro)
    return x - eta * update_direction(problem, rule.name, x, batch_idx, rho=rho, micro=micro, lam=lam)


def update_direction(problem: Problem, algorithm: str, x: torch.Tensor, batch_idx: torch.Tensor,
                     *, rho: float, micro: int, lam: float) -> torch.Tensor:
    """The direction G of ``algorithm`` at ``x [..., d]`` for batches ``batch_idx [..., B]``,
    vectorised over chains and micro-batches (arguments assumed valid: see :func:`step`)."""
    rule = get_rule(algorithm)
    parts = batch_idx.unflatten(-1, (-1, micro)) if rule.micro else batch_idx.unsqueeze(-2)
    points = x.unsqueeze(-2).expand(*parts.shape[:-1], x.shape[-1])  # [..., J, d]
    if rule.ascent != "none" and rho != 0:
        if rule.ascent == "full":
            ascent = problem.grad(x).unsqueeze(-2)
        elif rule.ascent == "part":
            ascent = problem.grad(points, parts)
        else:
            batch_grads = problem.sample_grads(x).gather(
                -2, batch_idx.unsqueeze(-1).expand(*batch_idx.shape, x.shape[-1]))
            ascent = reweighted_gradient(batch_grads, lam).unsqueeze(-2)
        if rule.scale is not None:
            ascent = scaled(rule.scale, points, ascent)
        if rule.normalized:
            ascent = ascent / ascent.norm(dim=-1, keepdim=True)
        points = points + rho * ascent
    return problem.grad(points, parts).mean(dim=-2)


def draw_batches(generator: torch.Generator, chains: int, n: int, batch: int,
                 sampling: str) -> torch.Tensor:
    """``[chains, batch]`` uniform sample indices, independent across chains: i.i.d. draws
    (with replacement) or a uniformly random ``batch``-subset in random order (without)."""
    device = generator.device
    if sampling == "with-replacement":
        return torch.randint(0, n, (chains, batch), generator=generator, device=device)
    keys = torch.rand(chains, n, generator=generator, device=device)
    return keys.topk(batch, dim=-1, sorted=True).indices


def run(problem: Problem, algorithm: str, *, eta: float, rho: float, batch: int,
        micro: int | None = None, x0: Any, steps: int, chains: int, seed: int,
        sampling: str = "with-replacement", device: str | torch.device = "cpu",
        lam: float = 1.0, progress: bool = False) -> torch.Tensor:
    """Run ``chains`` independent chains of ``algorithm`` for ``steps`` steps, each chain with
    its own mini-batches drawn from ``seed``; returns the iterates ``[steps+1, chains, d]``.

    ``lam`` is RW-SAM's inverse temperature (ignored by the other rules); ``progress`` shows a
    progress bar. The same seed, device and dtype of ``x0`` give the same iterates.
    """
    rule = get_rule(algorithm)
    check_eta(eta)
    check_rho(rho)
    check_lam(lam)
    check_sampling(sampling)
    micro = check_sizes(rule.name, batch, micro, problem.n, sampling)
    check_positive_int("steps", steps)
    check_positive_int("chains", chains)
    x = start_points(x0, chains, problem.dim, device)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    path = torch.empty(steps + 1, chains, problem.dim, dtype=x.dtype, device=x.device)
    path[0] = x
    with torch.no_grad():
        for k in tqdm(range(steps), desc=f"{rule.name} ensemble", disable=not progress):
            idx = draw_batches(generator, chains, problem.n, batch, sampling)
            x = x - eta * update_direction(problem, rule.name, x, idx, rho=rho, micro=micro, lam=lam)
            path[k + 1] = x
    return path
