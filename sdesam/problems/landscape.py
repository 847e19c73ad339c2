"""A 1-D escape landscape: a poor sharp minimum with large gradient noise, a flat good one.

The mean loss is two Gaussian wells plus a weak confining quadratic,

    f(x) = -A_s exp(-(x-x_s)^2 / 2w_s^2) - A_f exp(-(x-x_f)^2 / 2w_f^2) + kappa/2 (x-x_m)^2,

and sample i tilts it by two zero-mean, label-noise-like terms, one per well,

    f_i(x) = f(x) + sigma [a_i sqrt(H_s) Phi_s(x) + b_i sqrt(H_f) Phi_f(x)],
    Phi_k'(x) = exp(-(x-x_k)^2 / 2(s w_k)^2)      (Phi_k an error function),

with fixed scores a, b of mean exactly 0, mean square exactly 1 and zero correlation. Then f
is the mean of the f_i and the gradient-noise covariance is exactly

    V(x) = sigma^2 [H_s Phi_s'(x)^2 + H_f Phi_f'(x)^2],

so at each minimum V is sigma^2 times the curvature H_k = A_k / w_k^2 (the label-noise
relation V ~ sigma^2 Hessian): the sharp well is also the noisy one. ``noise_spread`` (s)
sets how far the noise of each well reaches beyond its width. The effective potential of
m-USAM, ``f + rho/2 |f'|^2 + rho c(m)/2 tr V``, raises the sharp minimum by about
``rho c(m) sigma^2 H_s / 2`` and the barrier top much less, so the poor well gets shallower as
m shrinks: :meth:`SharpFlatLandscape.effective_potential` and :meth:`barrier` measure this.
"""

from __future__ import annotations

import math

import sympy
import torch

from .. import validation
from ..algorithms import check_rho
from .base import Problem


class SharpFlatLandscape(Problem):
    """Per-sample losses on the line with a sharp noisy poor minimum and a flat quiet good one."""

    def __init__(self, n: int = 32, *, sharp_center: float = 0.0, sharp_depth: float = 0.5,
                 sharp_width: float = 0.2, flat_center: float = 1.5, flat_depth: float = 0.7,
                 flat_width: float = 0.6, label_noise: float = 3.0,
                 noise_spread: float = 1.5, confinement: float = 0.1) -> None:
        validation.int_at_least("n", n, 3)
        for name, value in (("sharp_depth", sharp_depth), ("sharp_width", sharp_width),
                            ("flat_depth", flat_depth), ("flat_width", flat_width),
                            ("noise_spread", noise_spread)):
            validation.positive_number(name, value)
        validation.non_negative_number("label_noise", label_noise)
        validation.non_negative_number("confinement", confinement)
        if not flat_width > sharp_width:
            raise validation.InputError(f"flat_width must exceed sharp_width; got flat_width={flat_width}, "
                             f"sharp_width={sharp_width}")
        if not (math.isfinite(sharp_center) and math.isfinite(flat_center)
                and flat_center > sharp_center):
            raise validation.InputError(
                "flat_center must lie to the right of sharp_center, both finite; got "
                f"flat_center={flat_center}, sharp_center={sharp_center}")
        self.n, self.dim = n, 1
        self.sharp = (float(sharp_center), float(sharp_depth), float(sharp_width))
        self.flat = (float(flat_center), float(flat_depth), float(flat_width))
        self.label_noise, self.confinement = float(label_noise), float(confinement)
        self.noise_spread = float(noise_spread)
        self.middle = (self.sharp[0] + self.flat[0]) / 2
        self.scores = _uncorrelated_scores(n)
        self.saddle = self._find_saddle()

    # ------------------------------------------------------------------ the loss family
    @staticmethod
    def curvature_of(well: tuple[float, float, float]) -> float:
        """Curvature A / w^2 of a Gaussian well (center, depth A, width w) at its center."""
        return well[1] / well[2] ** 2

    def mean_and_tilts(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(u)`` and the two tilt shapes ``sqrt(H_k) Phi_k(u)`` stacked last: ``[..., 2]``."""
        mean = self.confinement / 2 * (u - self.middle) ** 2
        tilts = []
        for center, depth, width in (self.sharp, self.flat):
            mean = mean - depth * torch.exp(-((u - center) ** 2) / (2 * width**2))
            spread = self.noise_spread * width
            tilts.append(math.sqrt(depth) / width * spread * math.sqrt(math.pi / 2)
                         * torch.special.erf((u - center) / (math.sqrt(2) * spread)))
        return mean, torch.stack(tilts, dim=-1)

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``f_i(x)``: ``[..., 1] -> [..., N]``."""
        self._check_point(x)
        mean, tilts = self.mean_and_tilts(x[..., 0])
        scores = self.scores.to(dtype=x.dtype, device=x.device)  # [2, N]
        return mean.unsqueeze(-1) + self.label_noise * (tilts @ scores)

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The same per-sample losses as sympy expressions in the symbol ``x``."""
        x = sympy.Symbol("x")
        mean = sympy.Float(self.confinement) / 2 * (x - sympy.Float(self.middle)) ** 2
        tilts = []
        for center, depth, width in (self.sharp, self.flat):
            mean -= sympy.Float(depth) * sympy.exp(-((x - center) ** 2) / (2 * sympy.Float(width) ** 2))
            spread = sympy.Float(self.noise_spread * width)
            tilts.append(sympy.sqrt(sympy.Float(depth)) / sympy.Float(width) * spread
                         * sympy.sqrt(sympy.pi / 2) * sympy.erf((x - center) / (sympy.sqrt(2) * spread)))
        sigma = sympy.Float(self.label_noise)
        return [mean + sigma * (sympy.Float(float(a)) * tilts[0] + sympy.Float(float(b)) * tilts[1])
                for a, b in self.scores.T.tolist()], [x]

    # ------------------------------------------------------------------ escape geometry
    @property
    def poor_minimum(self) -> torch.Tensor:
        """The sharp (poor) minimum as a point ``[1]`` (float64), refined by Newton steps."""
        return self._newton(self.sharp[0])

    @property
    def good_minimum(self) -> torch.Tensor:
        """The flat (good) minimum as a point ``[1]`` (float64), refined by Newton steps."""
        return self._newton(self.flat[0])

    def escaped(self, x: torch.Tensor) -> torch.Tensor:
        """True where a point ``[..., 1]`` lies past the saddle, in the good minimum's basin."""
        return x[..., 0] > self.saddle

    def effective_potential(self, x: torch.Tensor, rho: float, c: float) -> torch.Tensor:
        """m-USAM's potential ``f + rho/2 |grad f|^2 + rho c/2 tr V`` at points ``[..., 1]``.

        ``c`` is the sampling factor c(m) of one micro-batch (:func:`sdesam.algorithms.sampling_factor`).
        """
        check_rho(rho)
        if c < 0:
            raise validation.InputError(f"c must be >= 0; got {c!r}")
        grad = self.grad(x)
        return self.loss(x) + rho / 2 * grad.square().sum(-1) + rho * c / 2 * self.trace_V(x)

    def barrier(self, rho: float = 0.0, c: float = 0.0, grid: int = 4001) -> float:
        """Depth of the poor well under the effective potential (float64 grid): the highest
        value between the poor well's lowest point and the good minimum, minus that lowest
        value (0 when the potential falls all the way to the good minimum)."""
        left = self.sharp[0] - 3 * self.sharp[2]
        u = torch.linspace(left, self.flat[0], grid, dtype=torch.float64).unsqueeze(-1)
        phi = self.effective_potential(u, rho, c)
        start = int(torch.where(u[..., 0] <= self.saddle, phi, torch.inf).argmin())
        return float(phi[start:].max() - phi[start])

    # ------------------------------------------------------------------ helpers
    def _find_saddle(self, grid: int = 20001) -> float:
        """The local maximum of f between the two minima (grid search then Newton refinement)."""
        u = torch.linspace(self.sharp[0], self.flat[0], grid, dtype=torch.float64)
        mean, _ = self.mean_and_tilts(u)
        top = int(mean.argmax())
        if top in (0, grid - 1):
            raise validation.InputError("the two wells overlap: f has no barrier between them; move the "
                             "centers apart or make the wells narrower")
        return float(self._newton(float(u[top]))[0])

    def _newton(self, start: float, iterations: int = 30) -> torch.Tensor:
        """Newton iterations x <- x - f'(x)/f''(x) from ``start`` (float64, 1-D)."""
        x = torch.tensor([start], dtype=torch.float64)
        one = torch.ones(1, dtype=torch.float64)
        for _ in range(iterations):
            step = self.grad(x) / self.hvp(x, one)
            x = x - step
            if float(step.abs()) < 1e-14:
                break
        return x


def _uncorrelated_scores(n: int) -> torch.Tensor:
    """Two fixed score vectors ``[2, n]``, each of mean exactly 0 and mean square exactly 1,
    with zero mean product: symmetric normal quantiles q and the centred squares q^2 - mean
    (even in q, hence orthogonal to it)."""
    probabilities = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    first = _standardise(torch.special.ndtri(probabilities))
    second = first.square()
    second = second - second.mean()
    second = second - (second @ first) / (first @ first) * first
    return torch.stack([first, _standardise(second)])


def _standardise(scores: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``scores`` to mean exactly 0 and mean square exactly 1."""
    scores = scores - scores.mean()
    return scores / scores.square().mean().sqrt()
