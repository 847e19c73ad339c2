"""First-order SDEs of the SAM family, as torchsde modules, and their simulation.

Time is measured so that step k of the discrete algorithm sits at ``t = k * eta``:

    dX = b(X) dt + sqrt(eta) G(X) dW,   G = [grad f_i - grad f]_i sqrt(c(B)/N),  W in R^N,

so ``G G^T = c(B) V`` (the mini-batch noise of SGD, shared by every rule at leading order) with
no matrix square root. The drifts, first order in rho, are

* sgd: ``-grad f``;
* n-usam / usam / m-usam: ``-grad(f + rho/2 |grad f|^2 + c(m) rho/2 tr V)`` with c(m) the
  sampling factor of :func:`sdesam.algorithms.sampling_factor`, m = B for usam and no tr V
  term for n-usam;
* n-sam / sam / m-sam: ``-grad(f + rho E|grad f_S|)`` with S a uniform sample of size m
  (m-sam) or B (sam), and ``|grad f|`` in place of the expectation for n-sam.

Every drift needs one curvature product: with ``g_i = grad f_i`` the regulariser's gradient
is ``sum_i H_i u_i`` for per-sample vectors ``u_i``, which
:meth:`AlgorithmSDE.f_and_g_prod` builds from the same ``g_i`` that give the noise and hands
to :meth:`Problem.sample_grads_with_hvp` (one VJP, or a closed form where the problem has one). RW-SAM has no SDE here.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable

import torch
import torchsde
from tqdm.auto import tqdm

from .algorithms import check_rho, check_sampling, check_sizes, get_rule, rule_names, sampling_factor
from .brownian import FixedGridBrownian, time_grid
from .ensemble import check_eta, check_positive_int, draw_batches, start_points
from .problems.base import Problem

DROPPABLE_TERMS: dict[str, str] = {
    "trace_V": "the noise-induced drift term (c rho/2 tr V for the USAM rules; "
               "E|grad f_S| -> |grad f| for the SAM rules)",
    "gradient_norm": "the rho/2 |grad f|^2 drift term (USAM rules only)",
    "noise": "the diffusion (the SDE becomes the ODE of its drift)",
}


def sample_sets(n: int, size: int, sampling: str, *, limit: int = 20000, samples: int = 4096,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The uniform samples S of ``size`` out of ``n``: weights ``W [S, n]`` (``grad f_S =
    W @ g``), probabilities ``p [S]`` and whether the list is exact.

    All distinct samples are enumerated (multisets with multinomial probabilities with
    replacement, subsets without) when there are at most ``limit`` of them; otherwise
    ``samples`` index sets drawn from ``seed`` stand in for them with equal probabilities.
    """
    check_sampling(sampling)
    if sampling == "with-replacement":
        count = math.comb(n + size - 1, size)
        combos: Iterable = itertools.combinations_with_replacement(range(n), size)
    else:
        count = math.comb(n, size)
        combos = itertools.combinations(range(n), size)
    if count <= limit:
        index = torch.tensor(list(combos), dtype=torch.long)
        weights = torch.zeros(count, n, dtype=torch.float64).scatter_add_(
            1, index, torch.full(index.shape, 1.0 / size, dtype=torch.float64))
        if sampling == "with-replacement":
            counts = weights * size
            log_p = (math.lgamma(size + 1) - torch.lgamma(counts + 1).sum(dim=1)
                     - size * math.log(n))
            probs = log_p.exp()
        else:
            probs = torch.full((count,), 1.0 / count, dtype=torch.float64)
        return weights, probs, True
    generator = torch.Generator().manual_seed(seed)
    index = draw_batches(generator, samples, n, size, sampling)
    weights = torch.zeros(samples, n, dtype=torch.float64).scatter_add_(
        1, index, torch.full(index.shape, 1.0 / size, dtype=torch.float64))
    return weights, torch.full((samples,), 1.0 / samples, dtype=torch.float64), False


class AlgorithmSDE(torch.nn.Module):
    """The first-order SDE of ``algorithm`` on ``problem`` (an Ito SDE with general noise and
    N Brownian channels), usable with ``torchsde.sdeint`` and :func:`euler_maruyama`.

    ``drop_terms`` removes terms for ablations (see :data:`DROPPABLE_TERMS`). The SAM rules'
    expectation over samples is exact or sampled as described in :func:`sample_sets`.
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, problem: Problem, algorithm: str, *, eta: float, rho: float, batch: int,
                 micro: int | None = None, sampling: str = "with-replacement",
                 drop_terms: Iterable[str] = (), sam_samples: int = 4096, seed: int = 0) -> None:
        super().__init__()
        rule = get_rule(algorithm)
        if not rule.sde:
            raise ValueError(f"algorithm {rule.name!r} has no SDE in sdesam.sde (none hand-written); "
                             "choose one of " + ", ".join(rule_names(lambda r: r.sde)))
        self.eta, self.rho = check_eta(eta), float(check_rho(rho))
        self.micro = check_sizes(rule.name, batch, micro, problem.n, sampling)
        self.drop_terms = frozenset(drop_terms)
        unknown = self.drop_terms - set(DROPPABLE_TERMS)
        if unknown:
            raise ValueError(f"drop_terms must be drawn from {sorted(DROPPABLE_TERMS)}; "
                             f"got {sorted(unknown)}")
        if rule.normalized and "gradient_norm" in self.drop_terms:
            raise ValueError(f"drop_terms 'gradient_norm' applies to the USAM rules, not {rule.name!r}")
        self.problem, self.rule, self.batch, self.sampling = problem, rule, batch, sampling
        self.noise_scale = math.sqrt(self.eta * float(sampling_factor(batch, problem.n, sampling))
                                     / problem.n)
        size = self.micro if rule.micro else batch
        self.variance_factor = float(sampling_factor(size, problem.n, sampling))
        self.sets_exact = True
        if rule.normalized and rule.ascent == "part" and "trace_V" not in self.drop_terms:
            weights, probs, self.sets_exact = sample_sets(problem.n, size, sampling,
                                                          samples=sam_samples, seed=seed)
            self.register_buffer("set_weights", weights)
            self.register_buffer("set_probs", probs)

    # ------------------------------------------------------------------ torchsde interface
    def f(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        """Drift ``b(y)``: ``[chains, d]``."""
        return self._drift_and_centred(y)[0]

    def g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Diffusion times Brownian increment, ``sqrt(eta) G(y) v``, for ``v [chains, N]``."""
        return self._noise(self._centred(self.problem.sample_grads(y)), v)

    def f_and_g_prod(self, t: Any, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion-increment product from one evaluation of the per-sample gradients."""
        drift, centred = self._drift_and_centred(y)
        return drift, self._noise(centred, v)

    def diffusion(self, y: torch.Tensor) -> torch.Tensor:
        """The full diffusion matrix ``sqrt(eta) G(y)``: ``[chains, d, N]`` (for checks only;
        the integrators use :meth:`g_prod` and never build it)."""
        centred = self._centred(self.problem.sample_grads(y))
        scale = 0.0 if "noise" in self.drop_terms else self.noise_scale
        return scale * centred.transpose(-1, -2)

    # ------------------------------------------------------------------ the terms
    @staticmethod
    def _centred(grads: torch.Tensor) -> torch.Tensor:
        return grads - grads.mean(dim=-2, keepdim=True)

    def _noise(self, centred: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if "noise" in self.drop_terms:
            return torch.zeros_like(centred[..., 0, :])
        return self.noise_scale * (v.unsqueeze(-2) @ centred).squeeze(-2)

    def _drift_and_centred(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The drift and the centred per-sample gradients ``g_i - g`` at ``y``."""
        if self.rule.ascent == "none" or self.rho == 0:
            grads = self.problem.sample_grads(y)
            mean = grads.mean(dim=-2)
            return -mean, grads - mean.unsqueeze(-2)
        grads, hessian_sum = self.problem.sample_grads_with_hvp(y)
        mean = grads.mean(dim=-2)
        regulariser = hessian_sum(self._cotangent(grads, mean))
        return -(mean + regulariser), grads - mean.unsqueeze(-2)

    def _cotangent(self, grads: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Per-sample vectors ``u_i`` with ``grad(regulariser) = sum_i H_i u_i``: ``[chains, N, d]``."""
        n, rho = self.problem.n, self.rho
        noise_induced = self.rule.ascent == "part" and "trace_V" not in self.drop_terms
        if not self.rule.normalized:
            # grad(rho/2 a|g|^2 + rho/2 c tr V) = rho/N sum_i H_i ((a - c) g + c g_i)
            a = 0.0 if "gradient_norm" in self.drop_terms else 1.0
            c = self.variance_factor if noise_induced else 0.0
            return rho / n * ((a - c) * mean.unsqueeze(-2) + c * grads)
        if not noise_induced:  # grad(rho |g|) = rho/N sum_i H_i g/|g|
            unit = mean / mean.norm(dim=-1, keepdim=True)
            return (rho / n * unit).unsqueeze(-2).expand_as(grads)
        # grad(rho E|g_S|) = rho sum_S p_S sum_i W_Si H_i g_S/|g_S|
        weights = self.set_weights.to(grads)
        set_grads = weights @ grads  # [chains, S, d]
        units = set_grads / set_grads.norm(dim=-1, keepdim=True)
        return rho * weights.T @ (self.set_probs.to(grads).unsqueeze(-1) * units)


# ---------------------------------------------------------------------- simulation
def euler_maruyama(sde: AlgorithmSDE, y0: torch.Tensor, bm: FixedGridBrownian, *,
                   record_every: int = 1, progress: bool = False) -> torch.Tensor:
    """The Euler-Maruyama path of ``sde`` on the grid of ``bm``, kept every ``record_every``
    cells: the same update as torchsde's Euler solver, without its per-step machinery."""
    times = bm.times
    steps = times.numel() - 1
    path = [y0]
    y = y0
    with torch.no_grad():
        for k in tqdm(range(steps), desc="SDE", disable=not progress):
            dt = float(times[k + 1] - times[k])
            drift, noise = sde.f_and_g_prod(times[k], y, bm.increment(k))
            y = y + drift * dt + noise
            if (k + 1) % record_every == 0:
                path.append(y)
    return torch.stack(path)


def simulate(problem: Problem, algorithm: str, *, eta: float, rho: float, batch: int,
             micro: int | None = None, x0: Any, horizon: float, chains: int, seed: int,
             dt: float | None = None, method: str = "euler", drop_terms: Iterable[str] = (),
             sampling: str = "with-replacement", device: str | torch.device = "cpu",
             solver: str = "fast", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate ``chains`` paths of the SDE of ``algorithm`` up to time ``horizon``.

    Returns ``(times, path)``: float64 times ``k * eta`` for the discrete steps k = 0..T/eta
    (accumulated as the integrator's clock, so no interpolation happens) and the states
    ``[len(times), chains, d]``. ``dt`` (default ``eta``) is the integration step and must
    divide ``eta``. ``solver="fast"`` uses :func:`euler_maruyama`, ``"torchsde"`` calls
    ``torchsde.sdeint`` with the same :class:`FixedGridBrownian` (same seed, same paths).
    """
    rule = get_rule(algorithm)
    eta = check_eta(eta)
    if method != "euler":
        raise ValueError(f"method must be 'euler' (the only solver torchsde offers for general "
                         f"noise); got {method!r}")
    if solver not in ("fast", "torchsde"):
        raise ValueError(f"solver must be 'fast' or 'torchsde'; got {solver!r}")
    check_positive_int("chains", chains)
    dt = eta if dt is None else dt
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise ValueError(f"dt must be a positive number; got {dt!r}")
    substeps = round(eta / dt)
    if substeps < 1 or abs(substeps * dt - eta) > 1e-9 * eta:
        raise ValueError(f"dt must divide eta into a whole number of steps; got dt={dt}, eta={eta}")
    if not isinstance(horizon, (int, float)) or not horizon > 0 or \
            abs(round(horizon / eta) * eta - horizon) > 1e-9 * horizon:
        raise ValueError(f"horizon must be a positive multiple of eta={eta}; got {horizon!r}")
    sde = AlgorithmSDE(problem, rule.name, eta=eta, rho=rho, batch=batch, micro=micro,
                       sampling=sampling, drop_terms=drop_terms, seed=seed).to(device)
    y0 = start_points(x0, chains, problem.dim, device)
    grid = time_grid(round(horizon / eta) * substeps * float(dt), float(dt))
    bm = FixedGridBrownian(grid, (chains, problem.n), seed, dtype=y0.dtype, device=y0.device)
    times = grid[::substeps]
    if solver == "fast":
        return times, euler_maruyama(sde, y0, bm, record_every=substeps, progress=progress)
    with torch.no_grad():
        path = torchsde.sdeint(sde, y0, times.to(y0.device), bm=bm, dt=float(dt), method="euler")
    return times, path
