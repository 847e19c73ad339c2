"""A small two-layer tanh network learning from a random teacher network of the same shape."""

from __future__ import annotations

import sympy
import torch

from .. import validation
from .base import Problem, sympy_number


class TeacherStudent(Problem):
    """Square loss of a student ``a -> sum_k v_k tanh(w_k . a)`` on ``n`` Gaussian inputs
    labelled by a random teacher of width ``teacher_hidden`` (plus Gaussian label noise).

    The parameter vector is ``x = [W.flatten(), v]`` with ``W [hidden, inputs]``, so
    ``dim = hidden * (inputs + 1)``. Data and teacher are drawn from ``seed``; when
    ``teacher_hidden == hidden`` the teacher's parameters :attr:`teacher_point` are a global
    minimiser of the noise-free loss.
    """

    def __init__(self, n: int = 32, inputs: int = 2, hidden: int = 2, *,
                 teacher_hidden: int | None = None, noise: float = 0.0, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        for name, value in (("n", n), ("inputs", inputs), ("hidden", hidden)):
            validation.positive_int(name, value)
        teacher_hidden = validation.positive_int(
            "teacher_hidden", hidden if teacher_hidden is None else teacher_hidden)
        noise = validation.non_negative_number("noise", noise)   # an infinite noise: inf targets
        gen = torch.Generator().manual_seed(seed)
        self.inputs_data = torch.randn(n, inputs, generator=gen, dtype=dtype)
        teacher_w = torch.randn(teacher_hidden, inputs, generator=gen, dtype=dtype) / inputs**0.5
        teacher_v = torch.randn(teacher_hidden, generator=gen, dtype=dtype)
        clean = torch.tanh(self.inputs_data @ teacher_w.T) @ teacher_v
        self.targets = clean + noise * torch.randn(n, generator=gen, dtype=dtype)
        self.teacher_point = torch.cat([teacher_w.flatten(), teacher_v])
        self.hidden, self.n_inputs = hidden, inputs
        self.n, self.dim = n, hidden * (inputs + 1)

    def predictions(self, x: torch.Tensor) -> torch.Tensor:
        """Student outputs on every input: ``[..., d] -> [..., N]``."""
        split = self.hidden * self.n_inputs
        weights = x[..., :split].unflatten(-1, (self.hidden, self.n_inputs))
        activations = torch.tanh(weights @ self.inputs_data.to(x).T)  # [..., hidden, N]
        return (x[..., split:].unsqueeze(-2) @ activations).squeeze(-2)

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """``1/2 (student(a_i) - y_i)^2``: ``[..., d] -> [..., N]``."""
        return 0.5 * (self.predictions(x) - self.targets.to(x)).square()

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The losses as sympy expressions in ``x0..x{d-1}`` (data as exact rationals)."""
        variables = list(sympy.symbols(f"x0:{self.dim}", real=True))
        split = self.hidden * self.n_inputs
        losses = []
        for row, target in zip(self.inputs_data.tolist(), self.targets.tolist()):
            a = [sympy_number(v) for v in row]
            out = sum(variables[split + k] * sympy.tanh(sum(
                variables[k * self.n_inputs + j] * a[j] for j in range(self.n_inputs)))
                for k in range(self.hidden))
            losses.append((out - sympy_number(target)) ** 2 / 2)
        return losses, variables
