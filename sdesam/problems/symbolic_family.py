"""A problem given as sympy expressions: the family ``sdesam.symbolic`` derives SDEs for."""

from __future__ import annotations

from typing import Sequence

import sympy
import torch

from .. import validation
from .base import Problem


class SympyProblem(Problem):
    """Per-sample losses given as sympy expressions in ``variables``, evaluated in torch.

    The losses must be smooth and use every variable, the policy of
    :func:`sdesam.symbolic.derive` (:func:`sdesam.validation.smooth_losses`): a loss with
    ``Abs``, ``sign``, ``Piecewise``... has no SDE to compare a simulation with, and a variable
    no loss uses never moves.
    """

    def __init__(self, losses: Sequence[sympy.Expr], variables: Sequence[sympy.Symbol]) -> None:
        variables = validation.sympy_variables("variables", variables)
        losses = validation.smooth_losses("losses", losses, variables)
        extra = set().union(*(loss.free_symbols for loss in losses)) - set(variables)
        if extra:
            raise validation.InputError(
                f"losses use symbols that are not variables: {sorted(map(str, extra))}")
        self.losses, self.variables = losses, variables
        self.n, self.dim = len(losses), len(variables)
        self._evaluate = sympy.lambdify(variables, losses, modules="torch")

    def sample_losses(self, x: torch.Tensor) -> torch.Tensor:
        """The lambdified expressions at ``x``: ``[..., d] -> [..., N]``."""
        self._check_point(x)
        shape = x.shape[:-1]
        values = [torch.as_tensor(v, dtype=x.dtype, device=x.device).broadcast_to(shape)
                  for v in self._evaluate(*x.unbind(-1))]
        return torch.stack(values, dim=-1)

    def sympy_form(self) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
        """The expressions and variables this problem was built from."""
        return list(self.losses), list(self.variables)


def from_sympy(losses: Sequence[sympy.Expr], variables: Sequence[sympy.Symbol]) -> SympyProblem:
    """The torch problem of the sympy loss family ``losses`` in ``variables``."""
    return SympyProblem(losses, variables)
