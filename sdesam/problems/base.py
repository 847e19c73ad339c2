"""The Problem interface: N per-sample losses f_i(x), evaluated for many chains at once.

Shapes: a point batch ``x`` is ``[..., d]`` (usually ``[chains, d]``), per-sample values are
``[..., N]`` and per-sample gradients ``[..., N, d]``. A subclass implements only
:meth:`Problem.sample_losses` (broadcasting over the leading dimensions of ``x``); gradients,
Hessian-vector products and the gradient-noise covariance follow by automatic differentiation
(``torch.func``), never by finite differences. Subclasses with closed-form gradients may
override :meth:`Problem.sample_grads` for speed; everything else keeps working, because it is
written in terms of vector-Jacobian products of those two methods. Dtype and device follow
``x``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.func import jacrev, vjp, vmap

from sdesam.validation import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import sympy


EXACT_DENOMINATOR = 10_000
"""A data value whose shortest decimal is a fraction with at most this denominator (0.5, 0.25,
1.2) enters a sympy form exactly; any other float enters as a sympy Float."""


def sympy_number(value: float) -> "sympy.Expr":
    """A data value for a :meth:`Problem.sympy_form`: an integer or short decimal as an exact
    rational, any other float as a sympy Float of the same value (53 bits). An exact rational of
    a random float has a 16-digit denominator, and the products a derivation forms of them
    outgrow every machine integer (the compiled SDE then fails); a Float stays a float."""
    import sympy

    exact = sympy.nsimplify(value, rational=True)
    if exact.q <= EXACT_DENOMINATOR:
        return exact
    return sympy.Float(float(value))


@dataclass(frozen=True)
class FeatureForm:
    """A problem linear in its features: ``f_i(x) = phi_i(a_i . x) + ridge/2 |x|^2``, so
    ``grad f_i = phi_i'(z_i) a_i + ridge x`` and ``H_i = phi_i''(z_i) a_i a_i^T + ridge I`` with
    ``z = A x``. Per-sample quantities then live in ``[..., N]`` rather than ``[..., N, d]``,
    which the SDE's fast path exploits (:meth:`Problem.feature_form`).

    ``features`` is ``A [N, d]``; ``derivatives(z)`` maps ``z [..., N]`` to ``(phi'(z),
    phi''(z))``, the second None where it is 1 for every sample (least squares)."""

    features: torch.Tensor
    derivatives: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    ridge: float = 0.0


class Problem(abc.ABC):
    """N per-sample losses ``f_i: R^d -> R``; the objective is their mean ``f``."""

    n: int
    dim: int

    # ------------------------------------------------------------------ the abstract method
    @abc.abstractmethod
    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``f_i(x)``: ``[..., d] -> [..., N]``."""

    # ------------------------------------------------------------------ derived quantities
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The objective ``f(x) = mean_i f_i(x)``: ``[..., d] -> [...]``."""
        return self.sample_losses(x).mean(dim=-1)

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients ``grad f_i(x)``: ``[..., d] -> [..., N, d]``."""
        self._check_point(x)
        flat = x.reshape(-1, self.dim)
        jac = vmap(jacrev(self.sample_losses))(flat)
        return jac.reshape(*x.shape[:-1], self.n, self.dim)

    def subset_grads(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients of the samples ``idx [..., s]`` only, at ``x [..., d]`` (same
        leading shape): ``[..., s, d]``. Here the rows of :meth:`sample_grads` are gathered;
        problems with closed-form gradients override it to evaluate only those s samples."""
        grads = self.sample_grads(x)
        return grads.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, self.dim))

    def sample_grads_with_hvp(self, x: torch.Tensor
                              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-sample gradients ``[..., N, d]`` and the map ``u [..., N, d] -> sum_i H_i(x) u_i``
        (``H_i`` the Hessian of ``f_i``) at the same point: one VJP through
        :meth:`sample_grads`, so drifts built from curvature reuse a single forward pass.
        Problems with closed-form Hessians override it."""
        self._check_point(x)
        grads, pullback = vjp(self.sample_grads, x)
        return grads, lambda u: pullback(u.to(grads).expand_as(grads).contiguous())[0]

    def sample_weights(self, idx: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Weights ``w [..., N]`` with ``sum_i w_i f_i`` the mean loss over the indices ``idx``.

        ``idx [..., s]`` holds integer sample indices (repeats count twice); ``None`` gives the
        uniform weights 1/N. ``like`` fixes dtype and device.
        """
        if idx is None:
            return torch.full((self.n,), 1.0 / self.n, dtype=like.dtype, device=like.device)
        idx = self._check_indices(idx, like.device)
        weights = torch.zeros(*idx.shape[:-1], self.n, dtype=like.dtype, device=like.device)
        ones = torch.full(idx.shape, 1.0 / idx.shape[-1], dtype=like.dtype, device=like.device)
        return weights.scatter_add_(-1, idx, ones)

    def weighted_grad(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i grad f_i(x)`` for weights ``[..., N]`` (broadcast against ``x``): one VJP."""
        self._check_point(x)
        losses, pullback = vjp(self.sample_losses, x)
        (out,) = pullback(weights.to(losses).expand_as(losses).contiguous())
        return out

    def grad(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean gradient over the samples ``idx [..., s]`` (``None``: all N): ``[..., d]``."""
        return self.weighted_grad(x, self.sample_weights(idx, x))

    def hvp(self, x: torch.Tensor, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``(mean Hessian of f_i over idx) @ v`` at ``x``: ``[..., d]``."""
        _, pullback = vjp(lambda point: self.grad(point, idx), x)
        (out,) = pullback(v.to(x).expand_as(x).contiguous())
        return out

    def noise_covariance(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient-noise covariance ``V(x) = 1/N sum_i (g_i - g)(g_i - g)^T``: ``[..., d, d]``."""
        centred = self.centred_grads(x)
        return centred.transpose(-1, -2) @ centred / self.n

    def trace_V(self, x: torch.Tensor) -> torch.Tensor:
        """``tr V(x) = 1/N sum_i |g_i - g|^2``: ``[...]``."""
        return self.centred_grads(x).square().sum(dim=(-1, -2)) / self.n

    def centred_grads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients minus their mean, ``g_i - g``: ``[..., N, d]``."""
        grads = self.sample_grads(x)
        return grads - grads.mean(dim=-2, keepdim=True)

    def sympy_form(self) -> tuple[list["sympy.Expr"], list["sympy.Symbol"]] | None:
        """The same loss family as sympy expressions ``(losses, variables)``, or None."""
        return None

    def feature_form(self) -> FeatureForm | None:
        """The problem as ``phi_i(a_i . x) + ridge/2 |x|^2`` when it has that form, else None
        (the default: nothing is assumed, every layer uses the per-sample gradients)."""
        return None

    # ------------------------------------------------------------------ validation helpers
    def _check_point(self, x: Any) -> None:
        """Raise a ValueError unless ``x`` is a floating tensor whose last dimension is d."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"x must be a floating-point torch.Tensor of shape [..., {self.dim}]")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise InputError(f"x must have last dimension d={self.dim}; got shape {tuple(x.shape)}")

    def _check_indices(self, idx: Any, device: torch.device) -> torch.Tensor:
        """Return ``idx`` as a long tensor on ``device``; raise unless entries lie in [0, N)."""
        idx = torch.as_tensor(idx, device=device)
        if idx.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            raise InputError(f"idx must hold integer sample indices; got dtype {idx.dtype}")
        if idx.dim() == 0 or idx.shape[-1] == 0:
            raise InputError("idx must have shape [..., s] with s >= 1 sample indices")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise InputError(f"idx entries must lie in [0, {self.n}); got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return idx.long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dim={self.dim})"
