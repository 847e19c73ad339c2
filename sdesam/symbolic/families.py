"""Loss families the engine derives for: concrete per-sample losses, or the generic form.

Both expose the same small interface to :mod:`sdesam.symbolic.derivation`: the full loss,
the loss of a part (a mini- or micro-batch), the expectation of a function of one part or of
two disjoint parts over the sampling scheme, and the SGN covariance V.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import sympy
from sdesam.progress import progress_bar

from ..algorithms import check_sampling
from .moments import MomentCalculus, MomentValues
from .sampling import disjoint_pair_distribution, sample_distribution
from .taylor import gradient
from sdesam.validation import InputError

PartFn = Callable[..., sympy.Matrix]


class ConcreteFamily:
    """N given per-sample losses; expectations by exact enumeration of the index sets."""

    generic = False

    def tidy(self, expr: sympy.Expr) -> sympy.Expr:
        """Polynomials expanded; anything else (SAM's norms) left as the sum over index sets,
        which is far more readable than its expansion."""
        # test first: expanding SAM's and RW-SAM's norms and exponentials is the costly part
        return sympy.expand(expr) if expr.is_polynomial(*self.variables) else expr

    def __init__(self, losses: Sequence[sympy.Expr], variables: Sequence[sympy.Symbol], sampling: str,
                 progress: bool = False):
        self.losses = [sympy.sympify(loss) for loss in losses]
        self.variables = list(variables)
        self.sampling = check_sampling(sampling)
        self.n = len(self.losses)
        self.full_loss = sum(self.losses) / self.n
        self.progress = progress
        """Show a progress bar (with ETA) over the index sets of every expectation."""
        self._exact = not any(loss.has(sympy.Float) for loss in self.losses)
        self._derivatives: dict[tuple[str, Any], sympy.Matrix] = {}

    def part_loss(self, part: tuple[int, ...] | None) -> sympy.Expr:
        """Mean loss over the indices of ``part`` (with multiplicity); ``None``: all samples."""
        if part is None:
            return self.full_loss
        return sum(self.losses[i] for i in part) / len(part)

    def part_gradient(self, part: tuple[int, ...] | None) -> sympy.Matrix:
        """The gradient of :meth:`part_loss`, memoised (see :meth:`_part_derivative`)."""
        return self._part_derivative("gradient", part)

    def part_hessian(self, part: tuple[int, ...] | None) -> sympy.Matrix:
        """The Hessian of :meth:`part_loss`, memoised (see :meth:`_part_derivative`)."""
        return self._part_derivative("hessian", part)

    def _part_derivative(self, kind: str, part: tuple[int, ...] | None) -> sympy.Matrix:
        """``kind`` (gradient or hessian) of a part's loss, each computed once per family (a
        derivation and its reference form ask for the same parts). With exact coefficients
        a batch's is the mean of its samples' (each sample differentiated once, not once per
        batch that holds it): structurally what differentiating the part's loss gives. With
        floats the part's loss is differentiated, as the mean would round otherwise."""
        if (kind, part) not in self._derivatives:
            if part is None or len(part) == 1 or not self._exact:
                loss = self.part_loss(part)
                value = (gradient(loss, self.variables) if kind == "gradient"
                         else sympy.hessian(loss, self.variables))
            else:
                members = [self._part_derivative(kind, (i,)) for i in part]
                value = sympy.Matrix(*members[0].shape, [sympy.Add(*entries) / len(part)
                                                         for entries in zip(*members)])
            self._derivatives[kind, part] = value
        return self._derivatives[kind, part]

    def expect(self, fn: PartFn, size: int) -> sympy.Matrix:
        """E[fn(P)] for P a uniform sample of ``size``."""
        dist = sample_distribution(self.n, size, self.sampling)
        return self.weighted_sum((fn(part), p) for part, p in self._progress(dist, "E over batches"))

    def expect_pair(self, fn: PartFn, size: int) -> sympy.Matrix:
        """E[fn(P, Q)] for two distinct micro-batches P, Q of ``size`` drawn in one step."""
        if self.sampling == "with-replacement":
            dist = [((a, b), pa * pb) for a, pa in sample_distribution(self.n, size, self.sampling)
                    for b, pb in sample_distribution(self.n, size, self.sampling)]
        else:
            dist = disjoint_pair_distribution(self.n, size)
        return self.weighted_sum((fn(first, second), p)
                                 for (first, second), p in self._progress(dist, "E over pairs"))

    @staticmethod
    def weighted_sum(terms: Iterable[tuple[sympy.Matrix, sympy.Expr]]) -> sympy.Matrix:
        """sum_k p_k M_k, entry by entry, with every entry's terms collected and added once:
        adding to a growing sum re-flattens it every time (quadratic in the number of terms)."""
        entries: list[list[sympy.Expr]] = []
        shape = None
        for matrix, p in terms:
            if shape is None:
                shape, entries = matrix.shape, [[] for _ in range(len(matrix))]
            for bucket, entry in zip(entries, matrix):
                bucket.append(entry * p)
        if shape is None:
            raise ValueError("an expectation needs at least one index set")
        return sympy.Matrix(*shape, [sympy.Add(*bucket) for bucket in entries])

    def _progress(self, dist: list, what: str) -> Iterable:
        """``dist`` wrapped in a progress bar when asked for (shown after a second's delay)."""
        return progress_bar(dist, desc=what, unit="set", show=self.progress, delay=1.0,
                    leave=False, dynamic_ncols=True)

    def covariance_V(self) -> sympy.Matrix:
        """V(x) = (1/N) sum_i (grad f_i - grad f)(grad f_i - grad f)^T."""
        g = gradient(self.full_loss, self.variables)
        deviations = [gradient(loss, self.variables) - g for loss in self.losses]
        return sum((u * u.T for u in deviations), sympy.zeros(len(self.variables))) / self.n

    def trace_V(self) -> sympy.Expr:
        """tr V(x) = (1/N) sum_i |grad f_i|^2 - |grad f|^2."""
        g = gradient(self.full_loss, self.variables)
        return sum(gradient(l, self.variables).dot(gradient(l, self.variables))
                   for l in self.losses) / self.n - g.dot(g)


class GenericFamily:
    """Arbitrary smooth per-sample losses: f_S = f + xi_S, expectations through SGN moments."""

    generic = True

    def __init__(self, variables: Sequence[sympy.Symbol], n: Any, sampling: str):
        self.variables = list(variables)
        self.sampling = check_sampling(sampling)
        self.n = n
        self.calculus = MomentCalculus(self.variables, n, sampling)
        self.full_loss = sympy.Function("f", real=True)(*self.variables)

    def part_loss(self, part: int | None) -> sympy.Expr:
        """``f + xi_part`` for micro-batch label 1 or 2; ``None``: the full loss ``f``."""
        if part is None:
            return self.full_loss
        return self.full_loss + self.calculus.noise[part]

    def part_gradient(self, part: int | None) -> sympy.Matrix:
        """The gradient of :meth:`part_loss`."""
        return gradient(self.part_loss(part), self.variables)

    def part_hessian(self, part: int | None) -> sympy.Matrix:
        """The Hessian of :meth:`part_loss`."""
        return sympy.hessian(self.part_loss(part), self.variables)

    def expect(self, fn: PartFn, size: Any) -> sympy.Matrix:
        """E[fn(P)] over one sample of ``size``, through the moments."""
        return fn(1).applyfunc(lambda e: self.calculus.expectation(e, size))

    def expect_pair(self, fn: PartFn, size: Any) -> sympy.Matrix:
        """E[fn(P, Q)] over two disjoint micro-batches of ``size``, through the moments."""
        return fn(1, 2).applyfunc(lambda e: self.calculus.expectation(e, size))

    def instantiate(self, matrix: sympy.Matrix, losses: Sequence[sympy.Expr]) -> sympy.Matrix:
        """Evaluate a generic result on concrete per-sample losses (same variables)."""
        if self.n != len(losses) and isinstance(self.n, int):
            raise InputError(f"losses must contain n={self.n} expressions; got {len(losses)}")
        f = sum(sympy.sympify(l) for l in losses) / len(losses)
        n_value = {self.n: len(losses)} if isinstance(self.n, sympy.Symbol) else {}
        values = MomentValues(self.variables, f, losses)
        return matrix.applyfunc(
            lambda e: self.calculus.instantiate(e, f, losses, values).subs(n_value))

    def tidy(self, expr: sympy.Expr) -> sympy.Expr:
        """Group a generic expression by its derivative and moment factors, coefficients factored."""
        atoms = sorted(expr.atoms(sympy.Derivative, sympy.Function), key=str)
        return sympy.collect(sympy.expand(expr), atoms, sympy.factor)

    def covariance_V(self) -> sympy.Matrix:
        """V as the matrix of moment functions C[a|b]."""
        return self.calculus.covariance_V()

    def trace_V(self) -> sympy.Expr:
        """tr V = sum_a C[a|a]."""
        return self.calculus.trace_V()
