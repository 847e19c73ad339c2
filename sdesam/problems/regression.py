"""Linear and logistic regression on given data, one loss per example."""

from __future__ import annotations

import sympy
import torch

from .. import validation
from .base import FeatureForm, Problem, sympy_number


def _check_data(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``features [N, d]`` and ``targets [N]`` (shapes, and finite: a NaN or an
    infinity would make every chain diverge); return them as floating tensors."""
    features = torch.as_tensor(features)
    targets = torch.as_tensor(targets)
    if features.dim() != 2 or features.shape[0] < 1:
        raise validation.InputError(f"X must have shape [N, d] with N >= 1; got {tuple(features.shape)}")
    if targets.shape != features.shape[:1]:
        raise validation.InputError(f"y must have shape [N] = [{features.shape[0]}]; "
                                    f"got {tuple(targets.shape)}")
    dtype = features.dtype if features.is_floating_point() else torch.float64
    return (validation.finite_tensor("X", features.to(dtype)),
            validation.finite_tensor("y", targets.to(dtype)))


class LinearRegression(Problem):
    """Least squares ``f_i(x) = 1/2 (X_i . x - y_i)^2`` on data ``X [N, d]``, ``y [N]``."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.features, self.targets = _check_data(X, y)
        self.n, self.dim = map(int, self.features.shape)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """``X_i . x - y_i`` for every example: ``[..., d] -> [..., N]``."""
        return x @ self.features.to(x).T - self.targets.to(x)

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``1/2 (X_i . x - y_i)^2``: ``[..., d] -> [..., N]``."""
        return 0.5 * self.residuals(x).square()

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``(X_i . x - y_i) X_i`` in closed form: ``[..., N, d]``."""
        self._check_point(x)
        return self.residuals(x).unsqueeze(-1) * self.features.to(x)

    def subset_grads(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(X_i . x - y_i) X_i`` for the samples ``idx [..., s]`` only: ``[..., s, d]``."""
        features = self.features.to(x)[idx]
        residuals = (features * x.unsqueeze(-2)).sum(dim=-1) - self.targets.to(x)[idx]
        return residuals.unsqueeze(-1) * features

    def sample_grads_with_hvp(self, x: torch.Tensor):
        """Per-sample gradients and ``u -> sum_i X_i (X_i . u_i)`` in closed form."""
        self._check_point(x)
        features = self.features.to(x)
        return self.sample_grads(x), lambda u: (u * features).sum(dim=-1) @ features

    def feature_form(self) -> FeatureForm:
        """``phi_i(z) = 1/2 (z - y_i)^2`` on the features (:meth:`feature_derivatives`)."""
        return FeatureForm(self.features, self.feature_derivatives)

    def feature_derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``phi_i'(z_i) = z_i - y_i`` for ``z [..., N]``; the curvature is 1 (None)."""
        return z - self.targets.to(z), None

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The losses as sympy polynomials in ``x0..x{d-1}``."""
        variables = list(sympy.symbols(f"x0:{self.dim}", real=True))
        losses = []
        for row, target in zip(self.features.tolist(), self.targets.tolist()):
            pred = sum(sympy_number(a) * v for a, v in zip(row, variables))
            losses.append((pred - sympy_number(target)) ** 2 / 2)
        return losses, variables


class LogisticRegression(Problem):
    """Logistic loss ``f_i(x) = log(1 + exp(X_i . x)) - y_i X_i . x + l2/2 |x|^2`` for labels
    ``y_i in {0, 1}``; the optional ridge term ``l2 >= 0`` gives a minimiser on separable data."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, l2: float = 0.0) -> None:
        self.features, self.targets = _check_data(X, y)
        if not bool(((self.targets == 0) | (self.targets == 1)).all()):
            raise validation.InputError("y must hold labels in {0, 1}")
        self.l2 = validation.non_negative_number("l2", l2)
        self.n, self.dim = map(int, self.features.shape)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``X_i . x`` for every example: ``[..., d] -> [..., N]``."""
        return x @ self.features.to(x).T

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example logistic losses plus the ridge term: ``[..., d] -> [..., N]``."""
        z = self.logits(x)
        ridge = 0.5 * self.l2 * x.square().sum(dim=-1, keepdim=True)
        return torch.nn.functional.softplus(z) - self.targets.to(x) * z + ridge

    def sample_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``(sigmoid(X_i . x) - y_i) X_i + l2 x`` in closed form: ``[..., N, d]``."""
        self._check_point(x)
        weight = torch.sigmoid(self.logits(x)) - self.targets.to(x)
        return weight.unsqueeze(-1) * self.features.to(x) + self.l2 * x.unsqueeze(-2)

    def subset_grads(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(sigmoid(X_i . x) - y_i) X_i + l2 x`` for the samples ``idx [..., s]`` only."""
        features = self.features.to(x)[idx]
        weight = torch.sigmoid((features * x.unsqueeze(-2)).sum(dim=-1)) - self.targets.to(x)[idx]
        return weight.unsqueeze(-1) * features + self.l2 * x.unsqueeze(-2)

    def sample_grads_with_hvp(self, x: torch.Tensor):
        """Per-sample gradients and ``u -> sum_i (s_i (1 - s_i) X_i X_i^T + l2 I) u_i`` with
        ``s_i = sigmoid(X_i . x)``, in closed form."""
        self._check_point(x)
        features = self.features.to(x)
        probs = torch.sigmoid(self.logits(x))
        curvature = probs * (1 - probs)
        return self.sample_grads(x), lambda u: (
            (curvature * (u * features).sum(dim=-1)) @ features + self.l2 * u.sum(dim=-2))

    def feature_form(self) -> FeatureForm:
        """``phi_i(z) = log(1 + e^z) - y_i z`` on the features, plus the ridge
        (:meth:`feature_derivatives`)."""
        return FeatureForm(self.features, self.feature_derivatives, self.l2)

    def feature_derivatives(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi_i'(z_i) = sigmoid(z_i) - y_i`` and ``phi_i''(z_i) = sigmoid(z_i) (1 -
        sigmoid(z_i))`` for ``z [..., N]``."""
        probs = torch.sigmoid(z)
        return probs - self.targets.to(z), probs * (1 - probs)

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The losses as sympy expressions in ``x0..x{d-1}``."""
        variables = list(sympy.symbols(f"x0:{self.dim}", real=True))
        ridge = sympy_number(self.l2) / 2 * sum(v**2 for v in variables)
        losses = []
        for row, target in zip(self.features.tolist(), self.targets.tolist()):
            z = sum(sympy_number(a) * v for a, v in zip(row, variables))
            losses.append(sympy.log(1 + sympy.exp(z)) - int(target) * z + ridge)
        return losses, variables
