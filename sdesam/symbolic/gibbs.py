"""RW-SAM's Gibbs weights, derived: argmax over the simplex of sum_i p_i a_i + H(P)/lambda.

With a Lagrange multiplier mu for sum_i p_i = 1, stationarity gives
``a_i - (log p_i + 1)/lambda - mu = 0``, so ``p_i = exp(lambda (a_i - mu) - 1)``; the
constraint fixes mu, and the weights are the softmax of ``lambda a``. The objective's Hessian
is ``diag(-1/(lambda p_i))``, negative definite, so this stationary point is the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import sympy

from sdesam.validation import int_at_least


@dataclass
class GibbsDerivation:
    """The derived weights and the checks made on them."""

    weights: list[sympy.Expr]
    matches_softmax: bool
    concave: bool
    uniform_at_zero: bool
    latex: str


def derive_gibbs_weights(n: int) -> GibbsDerivation:
    """Solve the entropy-regularised weight problem for ``n`` samples with sympy."""
    int_at_least("n", n, 2)
    lam = sympy.Symbol("lambda", positive=True)
    mu = sympy.Symbol("mu", real=True)
    a = sympy.symbols(f"a1:{n + 1}", real=True)
    p = sympy.symbols(f"p1:{n + 1}", positive=True)
    objective = sum(pi * ai for pi, ai in zip(p, a)) - sum(pi * sympy.log(pi) for pi in p) / lam
    lagrangian = objective - mu * (sum(p) - 1)
    stationary = {pi: sympy.solve(sympy.diff(lagrangian, pi), pi)[0] for pi in p}
    multiplier = sympy.solve(sympy.Eq(sum(stationary.values()), 1), mu)[0]
    weights = [sympy.simplify(stationary[pi].subs(mu, multiplier)) for pi in p]
    partition = sum(sympy.exp(lam * aj) for aj in a)
    softmax = [sympy.exp(lam * ai) / partition for ai in a]
    matches = all(sympy.simplify(w - s) == 0 for w, s in zip(weights, softmax))
    hessian = sympy.hessian(objective, p)
    concave = all(hessian[i, j] == 0 for i in range(n) for j in range(n) if i != j) and all(
        bool(hessian[i, i].is_negative) for i in range(n))
    uniform = all(sympy.limit(w, lam, 0) == sympy.Rational(1, n) for w in weights)
    latex = (r"\max_{P\in\Delta}\ \sum_i p_i a_i + \tfrac{1}{\lambda}H(P)\ \Rightarrow\ "
             + r",\ ".join(f"p_{{{i + 1}}} = {sympy.latex(w)}" for i, w in enumerate(weights)))
    return GibbsDerivation(weights, matches, concave, uniform, latex)


def gibbs_probabilities(per_sample: Sequence[sympy.Matrix], lam: Any,
                        norm: Callable[[sympy.Matrix], sympy.Expr]) -> list[sympy.Expr]:
    """RW-SAM's weights ``p = softmax(lam |g_i|)`` over the batch's per-sample gradients
    ``per_sample`` (a repeated index counts once per draw)."""
    scores = [sympy.exp(lam * norm(g)) for g in per_sample]
    total = sympy.Add(*scores)
    return [score / total for score in scores]


def gibbs_direction(per_sample: Sequence[sympy.Matrix], lam: Any,
                    norm: Callable[[sympy.Matrix], sympy.Expr]) -> sympy.Matrix:
    """RW-SAM's ascent ``sum_i p_i g_i`` with ``p = softmax(lam |g_i|)`` over the batch's
    per-sample gradients ``per_sample`` (a repeated index counts once per draw)."""
    scores = [sympy.exp(lam * norm(g)) for g in per_sample]
    inverse = 1 / sympy.Add(*scores)
    # entry by entry: sympy's matrix sums and scalar division cost ~2x for these small vectors
    return sympy.Matrix(*per_sample[0].shape, [
        sympy.Add(*(s * g[k] for s, g in zip(scores, per_sample))) * inverse
        for k in range(len(per_sample[0]))])
