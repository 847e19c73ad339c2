"""Taylor expansion of a mini-batch gradient around x, along a displacement that may depend on x.

``grad f_P(x + delta)`` with ``delta = rho * a(x)`` is expanded as
``sum_k (1/k!) D^k grad f_P(x)[delta, ..., delta]``: the directional derivatives are taken with
a constant placeholder vector ``t`` and ``t`` is replaced by ``delta`` afterwards, so the
dependence of ``a`` on ``x`` is (correctly) not differentiated. Since ``delta`` carries one factor
of ``rho``, the k-th term is exactly of order ``rho^k``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import sympy


def gradient(expr: sympy.Expr, variables: Sequence[sympy.Symbol]) -> sympy.Matrix:
    """Column vector of partial derivatives of ``expr``."""
    return sympy.Matrix([sympy.diff(expr, v) for v in variables])


class TaylorGradient:
    """``grad f_P`` at ``x + delta``, expanded to a fixed order in the displacement ``delta``.

    ``grad`` is the part's gradient ``grad f_P(x)`` (a column of sympy expressions in
    ``variables``). Calling the object with a displacement returns the expansion; the
    directional-derivative tensors are computed once and reused for every displacement.
    """

    def __init__(self, grad: sympy.Matrix, variables: Sequence[sympy.Symbol], order: int):
        self.variables = list(variables)
        self.order = order
        self._t = sympy.symbols(f"_t0:{len(self.variables)}")
        terms = [grad]
        for k in range(1, order + 1):
            previous = terms[-1]
            terms.append(sympy.Matrix([
                sum(t * sympy.diff(entry, v) for t, v in zip(self._t, self.variables)) / k
                for entry in previous
            ]))
        self._terms = terms  # terms[k] = D^k grad f_P [t,...,t] / k!

    def __call__(self, displacement: sympy.Matrix | None) -> sympy.Matrix:
        """The expansion of ``grad f_P(x + displacement)``; ``None`` means no displacement."""
        if displacement is None:
            return self._terms[0]
        mapping = dict(zip(self._t, list(displacement)))
        total = self._terms[0]
        for term in self._terms[1:]:
            total = total + term.xreplace(mapping)
        return total


@lru_cache(maxsize=None)
def _factorial(k: int) -> int:
    return 1 if k < 2 else k * _factorial(k - 1)


def polynomial_degree(expr: sympy.Expr, symbol: sympy.Symbol) -> int | None:
    """An upper bound on the degree of ``expr`` as a polynomial in ``symbol``, read off its
    tree (sums, products, non-negative integer powers) without expanding it; None when
    ``symbol`` occurs elsewhere (in a function, a root, a denominator)."""
    if not expr.has(symbol):
        return 0
    if expr == symbol:
        return 1
    if expr.is_Add or expr.is_Mul:
        degrees = [polynomial_degree(arg, symbol) for arg in expr.args]
        if None in degrees:
            return None
        return max(degrees) if expr.is_Add else sum(degrees)
    if expr.is_Pow and expr.exp.is_Integer and expr.exp >= 0:
        base = polynomial_degree(expr.base, symbol)
        return None if base is None else base * int(expr.exp)
    return None


def truncate(expr: sympy.Expr, symbol: sympy.Symbol, order: int) -> sympy.Expr:
    """Keep the terms of ``expr`` up to ``symbol**order`` (Taylor coefficients at 0); a
    polynomial of degree at most ``order`` in ``symbol`` is returned as it is (what a rule's
    direction expanded to the order asked for is: differentiating it only rebuilds it)."""
    expr = sympy.sympify(expr)
    degree = polynomial_degree(expr, symbol)
    if degree is not None and degree <= order:
        return expr
    result = expr.subs(symbol, 0)
    derivative = expr
    for k in range(1, order + 1):
        derivative = sympy.diff(derivative, symbol)
        result += derivative.subs(symbol, 0) * symbol**k / _factorial(k)
    return result


def truncate_matrix(matrix: sympy.Matrix, symbol: sympy.Symbol, order: int) -> sympy.Matrix:
    """Entry-wise :func:`truncate`."""
    return matrix.applyfunc(lambda e: truncate(e, symbol, order))
