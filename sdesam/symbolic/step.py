"""The exact one-step map ``x - eta G`` of a rule for a given batch, without any expansion, and
the brute-force moments of G over every ordered batch (what :func:`derive` is tested against)."""

from __future__ import annotations

from itertools import permutations, product
from typing import Any, Sequence

import sympy

from .. import algorithms, validation
from .gibbs import gibbs_direction, gibbs_probabilities
from .symbols import eta, rho
from .taylor import gradient, truncate_matrix


def one_step_map(
    algorithm: str | algorithms.Rule,
    losses: Sequence[sympy.Expr],
    variables: Sequence[sympy.Symbol],
    batch: Sequence[int],
    micro: int | None = None,
    lam: sympy.Expr | float = 1,
    drawn: Sequence[int] | None = None,
) -> sympy.Matrix:
    """``x' = x - eta G(x; rho, batch)`` as a sympy Matrix in the variables, rho and eta.

    Micro-batches are consecutive blocks of ``micro`` indices of ``batch``; ``lam`` is RW-SAM's
    inverse temperature (its weights use the exact per-sample gradient norms at x, on the
    descent gradient too for rules with descent weights); ``drawn``: the positions in
    ``batch`` of the samples a rule that draws its perturbation drew (required by it, refused
    by the others).
    """
    rule = algorithms.get_rule(algorithm)
    batch = tuple(batch)
    m = algorithms.check_sizes(rule, len(batch), micro)
    if (drawn is None) != (rule.ascent_draw == 0):
        need = "required" if rule.ascent_draw else "refused"
        raise validation.InputError(f"drawn (positions of the drawn samples) is {need} by "
                                    f"{rule.name!r}; got drawn={drawn!r}")
    if drawn is not None and (len(drawn) != rule.ascent_draw
                              or not all(0 <= j < len(batch) for j in drawn)):
        raise validation.InputError(f"drawn must hold {rule.ascent_draw} positions in the batch "
                                    f"of {len(batch)}; got {drawn!r}")
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

    def weighted(point: sympy.Matrix, part: tuple[int, ...]) -> sympy.Matrix:
        probs = gibbs_probabilities([grad(x, (i,)) for i in part], lam, norm)
        return sum((p * grad(point, (i,)) for p, i in zip(probs, part)),
                   sympy.zeros(len(variables), 1))

    def draw(part: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(part[j] for j in drawn)

    G = algorithms.direction(rule, x, parts, rho, grad, norm, reweighted, weighted, draw)
    return x - eta * G


def draw_probabilities(losses: Sequence[sympy.Expr], variables: Sequence[sympy.Symbol],
                       batch: Sequence[int], draws: int, lam: Any = 1
                       ) -> list[tuple[tuple[int, ...], sympy.Expr]]:
    """Every ordered draw of ``draws`` positions of ``batch`` (with replacement) and its
    probability, a product of the Gibbs weights ``softmax(lam |grad f_i(x)|)`` of the batch."""
    grads = [gradient(losses[i], variables) for i in batch]
    probs = gibbs_probabilities(grads, lam, lambda v: sympy.sqrt(v.dot(v)))
    return [(positions, sympy.Mul(*(probs[j] for j in positions)))
            for positions in product(range(len(batch)), repeat=draws)]


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
    """E[G] and Cov(G) to ``rho^order``, by expanding the exact map of every ordered batch (and
    every draw of a rule that draws its perturbation, with its probability) in rho and
    averaging: the brute-force reference (cost: N^B maps, each expanded)."""
    rule = algorithms.get_rule(algorithm)
    x = sympy.Matrix(variables)
    batches = ordered_batches(len(losses), batch, sampling)
    weighted_directions = []
    for b in batches:
        draws = (draw_probabilities(losses, variables, b, rule.ascent_draw, lam)
                 if rule.ascent_draw else [(None, sympy.Integer(1))])
        for drawn, p in draws:
            step = one_step_map(rule, losses, variables, b, micro, lam, drawn)
            weighted_directions.append((truncate_matrix((x - step) / eta, rho, order), p / len(batches)))
    mean = sum((p * g for g, p in weighted_directions), sympy.zeros(len(variables), 1))
    second = sum((p * g * g.T for g, p in weighted_directions), sympy.zeros(len(variables)))
    return mean, truncate_matrix(second - mean * mean.T, rho, order)
