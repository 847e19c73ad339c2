"""The exact one-step map ``x - eta G`` of a rule for a given batch, without any expansion."""

from __future__ import annotations

from typing import Sequence

import sympy

from .. import algorithms
from .gibbs import gibbs_direction
from .symbols import eta, rho
from .taylor import gradient


def one_step_map(
    algorithm: str | algorithms.Rule,
    losses: Sequence[sympy.Expr],
    variables: Sequence[sympy.Symbol],
    batch: Sequence[int],
    micro: int | None = None,
    lam: sympy.Expr | float = 1,
) -> sympy.Matrix:
    """``x' = x - eta G(x; rho, batch)`` as a sympy Matrix in the variables, rho and eta.

    Micro-batches are consecutive blocks of ``micro`` indices of ``batch``; ``lam`` is RW-SAM's
    inverse temperature (its weights use the exact per-sample gradient norms).
    """
    rule = algorithms.resolve(algorithm)
    batch = tuple(batch)
    m = algorithms.check_sizes(rule, len(batch), micro)
    parts = [batch[i:i + m] for i in range(0, len(batch), m)] if rule.micro else [batch]
    x = sympy.Matrix(variables)
    grads = [gradient(loss, variables) for loss in losses]

    def grad(point: sympy.Matrix, part: tuple[int, ...] | None) -> sympy.Matrix:
        members = range(len(losses)) if part is None else part
        g = sum((grads[i] for i in members), sympy.zeros(len(variables), 1)) / len(members)
        return g.xreplace(dict(zip(variables, point)))

    def norm(v: sympy.Matrix) -> sympy.Expr:
        return sympy.sqrt(v.dot(v))

    def reweighted(point: sympy.Matrix, part: tuple[int, ...]) -> sympy.Matrix:
        return gibbs_direction([grad(point, (i,)) for i in part], lam, norm)

    G = algorithms.direction(rule, x, parts, rho, grad, norm, reweighted)
    return x - eta * G
