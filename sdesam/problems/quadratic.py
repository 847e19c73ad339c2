"""Quadratic per-sample losses f_i(x) = 1/2 (x - c_i)^T H_i (x - c_i).

The one family where the discrete USAM mean and its SDE's mean are linear in x and known in
closed form, which makes it the reference problem for the integrator.
"""

from __future__ import annotations

import sympy
import torch

from .. import validation
from .base import Problem, sympy_number


class Quadratic(Problem):
    """``f_i(x) = 1/2 (x - c_i)^T H_i (x - c_i)`` with symmetric ``hessians [N, d, d]`` and
    ``centers [N, d]``."""

    def __init__(self, hessians: torch.Tensor, centers: torch.Tensor) -> None:
        hessians = torch.as_tensor(hessians)
        centers = torch.as_tensor(centers)
        if hessians.dim() != 3 or hessians.shape[1] != hessians.shape[2]:
            raise validation.InputError(f"hessians must have shape [N, d, d]; got {tuple(hessians.shape)}")
        if centers.shape != hessians.shape[:2]:
            raise validation.InputError(f"centers must have shape [N, d] = {tuple(hessians.shape[:2])}; "
                             f"got {tuple(centers.shape)}")
        validation.finite_tensor("hessians", hessians)
        validation.finite_tensor("centers", centers)
        if not torch.allclose(hessians, hessians.transpose(1, 2)):
            raise validation.InputError("hessians must be symmetric matrices H_i = H_i^T")
        self.hessians = hessians.to(torch.float64) if not hessians.is_floating_point() else hessians
        self.centers = centers.to(self.hessians.dtype)
        self.n, self.dim = int(centers.shape[0]), int(centers.shape[1])

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``1/2 (x - c_i)^T H_i (x - c_i)`` for every sample: ``[..., d] -> [..., N]``."""
        diff = x.unsqueeze(-2) - self.centers.to(x)
        return 0.5 * torch.einsum("...ni,nij,...nj->...n", diff, self.hessians.to(x), diff)

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``H_i (x - c_i)`` in closed form: ``[..., d] -> [..., N, d]``."""
        self._check_point(x)
        diff = x.unsqueeze(-2) - self.centers.to(x)
        return torch.einsum("nij,...nj->...ni", self.hessians.to(x), diff)

    def sample_grads_with_hvp(self, x: torch.Tensor):
        """Per-sample gradients and ``u -> sum_i H_i u_i``, both in closed form."""
        hessians = self.hessians.to(x)
        return self.sample_grads(x), lambda u: torch.einsum("nij,...nj->...i", hessians, u)

    def mean_hessian(self) -> torch.Tensor:
        """``H = 1/N sum_i H_i``, the (constant) Hessian of f."""
        return self.hessians.mean(dim=0)

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The losses as sympy polynomials in ``x0..x{d-1}`` (coefficients as exact rationals
        of the stored floating-point values)."""
        variables = list(sympy.symbols(f"x0:{self.dim}", real=True))
        xs = sympy.Matrix(variables)
        losses = []
        for hessian, center in zip(self.hessians.tolist(), self.centers.tolist()):
            diff = xs - sympy.Matrix([sympy_number(c) for c in center])
            h = sympy.Matrix([[sympy_number(v) for v in row] for row in hessian])
            losses.append(sympy.expand((diff.T * h * diff)[0, 0] / 2))
        return losses, variables
