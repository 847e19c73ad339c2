"""The exact one-step map ``x - eta G`` of a rule for a given batch, without any expansion, and
the brute-force moments of G over every ordered batch (what :func:`derive` is tested against)."""

from __future__ import annotations

from itertools import permutations, product
from typing import Any, Sequence

import sympy

from .. import algorithms
from .gibbs import gibbs_direction
from .symbols import eta, rho
from .taylor import gradient, truncate_matrix


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


def ordered_batches(n: int, batch: int, sampling: str) -> list[tuple[int, ...]]:
    """Every ordered batch of ``batch`` indices out of ``n``, each equally likely."""
    algorithms.check_sampling(sampling)
    if sampling == "with-replacement":
        return list(product(range(n), repeat=batch))
    return list(permutations(range(n), batch))


def enumerated_moments(
    algorithm: str | algorithms.Rule,
    losses: Sequence[sympy.Expr],
    variables: Sequence[sympy.Symbol],
    batch: int,
    micro: int | None,
    sampling: str,
    order: int,
    lam: Any = 1,
) -> tuple[sympy.Matrix, sympy.Matrix]:
    """E[G] and Cov(G) to ``rho^order``, by expanding the exact map of every ordered batch in
    rho and averaging: the brute-force reference (cost: N^B maps, each expanded)."""
    x = sympy.Matrix(variables)
    directions = [truncate_matrix((x - one_step_map(algorithm, losses, variables, b, micro, lam)) / eta,
                                  rho, order)
                  for b in ordered_batches(len(losses), batch, sampling)]
    mean = sum(directions, sympy.zeros(len(variables), 1)) / len(directions)
    second = sum((g * g.T for g in directions), sympy.zeros(len(variables))) / len(directions)
    return mean, truncate_matrix(second - mean * mean.T, rho, order)
