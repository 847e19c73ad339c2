"""The generic form: expectations over batch sampling expressed through SGN moments.

Write the loss of a sample S as ``f_S = f + xi_S``, with ``f`` the full loss and ``xi_S`` the
sampling noise of the mean over S (an undefined function of x). Every update direction is then
a polynomial in the derivatives of ``xi``, whose expectations are moments of the per-sample
derivatives ``u_i^alpha = d^alpha f_i - d^alpha f``:

- ``E[d^a xi_S] = 0``;
- ``E[d^a xi_S d^b xi_S] = c2(s) C[a,b]`` with ``C[a,b] = (1/N) sum_i u_i^a u_i^b``
  (``C`` at first derivatives is the SGN covariance V);
- ``E[d^a xi_S d^b xi_S d^c xi_S] = c3(s) M[a,b,c]`` (third moments);
- two disjoint micro-batches I, J: ``E[d^a xi_I d^b xi_J] = k11 C[a,b]`` and
  ``E[d^a xi_I d^b xi_I d^c xi_J] = k21(m) M[a,b,c]``.

The coefficients follow from counting index coincidences (u sums to zero over the data); with
replacement the samples are independent, so k11 = k21 = 0. ``C`` and ``M`` are sympy functions
of x whose derivatives obey the product rule (``d_x C[a,b] = C[a+x,b] + C[a,b+x]``), so the
gradient of ``tr V = sum_a C[a,a]`` comes out in the same terms as the derived drift.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import sympy

from ..algorithms import check_sampling, sampling_factor
from ..validation import InputError

MultiIndex = tuple[int, ...]


class UnsupportedMoment(InputError):
    """The expansion needs a moment of a degree the generic form does not have (more than 3)."""


def _index_label(alpha: MultiIndex, names: tuple[str, ...]) -> str:
    sep = "" if all(len(n) == 1 for n in names) else ","
    return sep.join(names[i] for i in alpha) or "0"


@lru_cache(maxsize=None)
def moment_function(indices: tuple[MultiIndex, ...], names: tuple[str, ...]) -> type:
    """The sympy function class of the moment ``(1/N) sum_i prod_k u_i^{indices[k]}``.

    ``indices`` are multi-indices of derivatives (tuples of variable positions); the class is
    symmetric in them and differentiates by the product rule.
    """
    key = tuple(sorted(tuple(sorted(a)) for a in indices))
    if key != indices:
        return moment_function(key, names)
    letter = {2: "C", 3: "M"}.get(len(key), f"M{len(key)}")
    name = f"{letter}[{'|'.join(_index_label(a, names) for a in key)}]"

    def fdiff(self: sympy.Function, argindex: int = 1) -> sympy.Expr:
        i = argindex - 1
        return sum(
            moment_function(key[:j] + (tuple(sorted(key[j] + (i,))),) + key[j + 1:], names)(*self.args)
            for j in range(len(key))
        )

    return type(name, (sympy.Function,), {"fdiff": fdiff, "nargs": len(names), "indices": key})


def single_coefficient(degree: int, size: Any, n: Any, sampling: str) -> Any:
    """c_k(s): E[prod of k noise derivatives of one sample of ``size``] / (k-th moment)."""
    check_sampling(sampling)
    s = sympy.sympify(size)
    if degree == 2:
        return sampling_factor(s, n, sampling)
    if degree == 3:
        if sampling == "with-replacement":
            return 1 / s**2
        return (1 - 3 * (s - 1) / (n - 1) + 2 * (s - 1) * (s - 2) / ((n - 1) * (n - 2))) / s**2
    raise UnsupportedMoment(
        f"the generic form supports moments up to degree 3; this expansion needs degree "
        f"{degree} (lower the order, or give concrete losses)"
    )


def pair_coefficient(degrees: tuple[int, int], size: Any, n: Any, sampling: str) -> Any:
    """Mixed moment coefficient of two disjoint micro-batches of ``size`` each."""
    check_sampling(sampling)
    if sampling == "with-replacement":
        return 0  # independent draws; at least one factor per batch has mean zero
    m = sympy.sympify(size)
    if degrees == (1, 1):
        return -1 / (n - 1)
    if degrees in ((2, 1), (1, 2)):
        return (2 * m - n) / (m * (n - 1) * (n - 2))
    raise UnsupportedMoment(
        f"the generic form supports cross moments of micro-batches up to degree 3; this "
        f"expansion needs degrees {degrees} (lower the order, or give concrete losses)"
    )


class MomentCalculus:
    """Expectation of polynomials in the noise functions ``xi_1``, ``xi_2`` of two micro-batches."""

    def __init__(self, variables: Sequence[sympy.Symbol], n: Any, sampling: str):
        self.variables = tuple(variables)
        self.names = tuple(str(v) for v in self.variables)
        self.n = sympy.sympify(n)  # exact rationals even when n is a Python int
        self.sampling = check_sampling(sampling)
        self.noise = {label: sympy.Function(f"xi_{label}", real=True)(*self.variables)
                      for label in (1, 2)}

    def moment(self, indices: Sequence[MultiIndex]) -> sympy.Expr:
        """The moment function of the given derivative multi-indices, applied to x."""
        return moment_function(tuple(indices), self.names)(*self.variables)

    def trace_V(self) -> sympy.Expr:
        """tr V = sum_a C[a,a] (first derivatives)."""
        return sum(self.moment(((a,), (a,))) for a in range(len(self.variables)))

    def covariance_V(self) -> sympy.Matrix:
        """V as the matrix of C[a,b]."""
        d = len(self.variables)
        return sympy.Matrix(d, d, lambda a, b: self.moment(((a,), (b,))))

    def instantiate(self, expr: sympy.Expr, f: sympy.Expr, losses: Sequence[sympy.Expr],
                    values: "MomentValues | None" = None) -> sympy.Expr:
        """Evaluate a generic expression on concrete per-sample ``losses`` with mean ``f``:
        ``f`` and its derivatives become the concrete ones, each moment its concrete value
        (from ``values``: pass one :class:`MomentValues` for every entry of a matrix)."""
        if values is None:
            values = MomentValues(self.variables, f, losses)
        moments = {a: values(a.func.indices) for a in expr.atoms(sympy.Function)
                   if hasattr(a.func, "indices")}
        general = sympy.Function("f", real=True)(*self.variables)
        return expr.xreplace(moments).subs(general, f).doit()

    def _atom(self, atom: sympy.Expr) -> tuple[int, MultiIndex] | None:
        """(label, multi-index) for a noise factor, or None for anything else."""
        for label, xi in self.noise.items():
            if atom == xi:
                return label, ()
            if isinstance(atom, sympy.Derivative) and atom.expr == xi:
                alpha: list[int] = []
                for var, count in atom.variable_count:
                    alpha.extend([self.variables.index(var)] * count)
                return label, tuple(sorted(alpha))
        return None

    def expectation(self, expr: sympy.Expr, size: Any) -> sympy.Expr:
        """E over the sampling of ``expr``, a polynomial in the noise of micro-batches of ``size``."""
        expr = sympy.expand(expr)
        atoms = [a for a in expr.atoms(sympy.Derivative, sympy.core.function.AppliedUndef)
                 if self._atom(a) is not None]
        if not atoms:
            return expr
        placeholders = sympy.symbols(f"_z0:{len(atoms)}")
        poly = sympy.Poly(expr.xreplace(dict(zip(atoms, placeholders))), *placeholders)
        info = [self._atom(a) for a in atoms]
        total = sympy.Integer(0)
        for powers, coefficient in poly.terms():
            by_label: dict[int, list[MultiIndex]] = {1: [], 2: []}
            for (label, alpha), power in zip(info, powers):
                by_label[label].extend([alpha] * power)
            total += coefficient * self._monomial_moment(by_label[1], by_label[2], size)
        return total

    def _monomial_moment(self, first: list[MultiIndex], second: list[MultiIndex], size: Any) -> sympy.Expr:
        if not first and not second:
            return sympy.Integer(1)
        if not second or not first:
            factors = first or second
            if len(factors) == 1:
                return sympy.Integer(0)
            return single_coefficient(len(factors), size, self.n, self.sampling) * self.moment(factors)
        coefficient = pair_coefficient((len(first), len(second)), size, self.n, self.sampling)
        return coefficient * self.moment(first + second) if coefficient != 0 else sympy.Integer(0)


class MomentValues:
    """The concrete moments ``(1/N) sum_i prod_k (d^{a_k} f_i - d^{a_k} f)`` of given losses
    with mean ``f``, each deviation ``d^a f_i - d^a f`` and each moment computed once: every
    moment differentiates every loss, and one moment recurs in many entries of a result."""

    def __init__(self, variables: Sequence[sympy.Symbol], f: sympy.Expr,
                 losses: Sequence[sympy.Expr]):
        self.variables = tuple(variables)
        self.f = f
        self.losses = list(losses)
        self._mean_derivatives: dict[MultiIndex, sympy.Expr] = {}
        self._deviations: dict[tuple[int, MultiIndex], sympy.Expr] = {}
        self._moments: dict[tuple[MultiIndex, ...], sympy.Expr] = {}

    def derivative(self, loss: sympy.Expr, alpha: MultiIndex) -> sympy.Expr:
        """``d^alpha loss``."""
        return sympy.diff(loss, *[self.variables[i] for i in alpha]) if alpha else loss

    def deviation(self, i: int, alpha: MultiIndex) -> sympy.Expr:
        """``d^alpha f_i - d^alpha f``."""
        if alpha not in self._mean_derivatives:
            self._mean_derivatives[alpha] = self.derivative(self.f, alpha)
        if (i, alpha) not in self._deviations:
            self._deviations[i, alpha] = (self.derivative(self.losses[i], alpha)
                                          - self._mean_derivatives[alpha])
        return self._deviations[i, alpha]

    def __call__(self, indices: tuple[MultiIndex, ...]) -> sympy.Expr:
        """The moment of the derivative multi-indices ``indices``."""
        if indices not in self._moments:
            self._moments[indices] = sum(
                sympy.Mul(*[self.deviation(i, a) for a in indices])
                for i in range(len(self.losses))
            ) / len(self.losses)
        return self._moments[indices]
