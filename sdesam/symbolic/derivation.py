"""Derive the (eta, rho) SDE of a SAM-family rule: ``dX = b(X) dt + sqrt(eta Sigma(X)) dW``.

The update ``x' = x - eta G`` is built by :func:`sdesam.algorithms.direction` -- the same code
the simulations and optimizers are tested against -- with sympy gradients expanded in rho
(:mod:`sdesam.symbolic.taylor`); every rule fact is derived (:data:`SUPPORT`), Gibbs weights on
the descent gradient and drawn perturbations included (a drawn perturbation's expectations are
taken over its draws, with their Gibbs probabilities, inside each batch). Then

- drift ``b = -E[G]`` to order ``rho^order``; for ``order >= 2`` the first correction in eta,
  ``-(eta/2) J(E G) E G`` (J the Jacobian), which makes the SDE match the discrete map to
  second weak order (for SGD it gives the known ``-grad(f + eta/4 |grad f|^2)``);
- diffusion ``Sigma = Cov(G)`` to order ``rho^diffusion_order`` (``order - 1`` by default: the
  leading term at order 1, its O(rho) correction from order 2 on). For m-rules with
  J = B/m micro-batches, ``Cov(G) = (Var(G_1) + (J-1) Cov(G_1, G_2)) / J`` by exchangeability.

Expectations use one micro-batch (linearity) or one pair of them (the covariance), never a
whole enumeration of batches; on concrete losses, the rules polynomial in the batch noise take
them from the generic SGN-moment result evaluated on the losses (exact, and its cost does not
grow with N), the others by enumeration. The references :meth:`Derivation.verify` compares with
are in :mod:`sdesam.symbolic.references`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Sequence

import sympy

from .. import algorithms, validation
from ..algorithms import ANY, DESCENT_WEIGHTS, Rule, Support
from ..validation import InputError
from . import references
from .families import ConcreteFamily, GenericFamily
from .gibbs import gibbs_direction, gibbs_probabilities
from .moments import UnsupportedMoment
from .sampling import count_index_sets
from .symbols import RESERVED_NAMES, eta, lam as lam_symbol, rho
from .taylor import TaylorGradient, gradient, truncate_matrix

GENERIC = "generic"

EXPECTATIONS: tuple[str, ...] = ("auto", "enumeration", "moments")
"""How concrete expectations are taken: ``"enumeration"`` of the index sets; ``"moments"``, the
generic SGN-moment result evaluated on the losses (exact; polynomial rules only, up to degree-3
moments); ``"auto"``: moments where they apply and the enumeration would visit more than
:data:`MOMENTS_ABOVE` index sets (the moments' cost hardly grows with N), else enumeration."""

MOMENTS_ABOVE = 24
"""Index sets beyond which ``"auto"`` takes the moments: below it enumeration is as fast
(measured: 2-D, order 2, N = 3, 6 index sets: enumeration 0.75 s, moments 1.6 s; 1-D, order 1,
N = 12, m = 2 without replacement, 3036 index sets: enumeration 1.5 s, moments 0.2 s)."""

Family = ConcreteFamily | GenericFamily


SUPPORT = Support("the symbolic derivation (sdesam.symbolic.derive)", scaled=(False, True),
                  descent_weights=DESCENT_WEIGHTS, ascent_draw=ANY)
"""The rule facts :func:`derive` implements: every one (on concrete losses; generic losses need a
rule polynomial in the noise, see :func:`moments_apply`)."""


def supports(rule: Rule) -> str | None:
    """None when :func:`derive` derives ``rule``, else the fact it lacks."""
    return SUPPORT.reason(rule)


def moments_apply(rule: Rule) -> bool:
    """Whether ``rule``'s direction is polynomial in the batch noise, so that its expectations
    have an expression in SGN moments (no normalisation, no Gibbs weights)."""
    return not rule.normalized and not rule.weighted


def __getattr__(name: str) -> Any:
    """``SYMBOLIC_ALGORITHMS``: the registered rules :func:`derive` supports, read at access time."""
    if name == "SYMBOLIC_ALGORITHMS":
        return algorithms.rule_names(lambda rule: supports(rule) is None)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(repr=False)
class Derivation:
    """The derived SDE of one rule on one loss family; keep working with any field in sympy.

    :attr:`notes` says why a part of the result is what it is -- in particular why the diffusion
    is zero where it is (e.g. ``B = N`` without replacement: every batch is the whole data set).
    """

    rule: Rule
    variables: list[sympy.Symbol]
    family: Family
    batch: Any
    micro: Any
    sampling: str
    order: int
    diffusion_order: int
    drift: sympy.Matrix
    diffusion: sympy.Matrix
    expected_direction: sympy.Matrix
    closed_form: sympy.Matrix | None = None
    noise_factor: Any = None
    """c(s) in front of tr V in the drift: c(m) for m-rules, c(B) for mini-batch rules, 0 else."""
    lam: Any = None
    """RW-SAM's inverse temperature (None for rules without Gibbs weights)."""
    expectations: str = "enumeration"
    """How the expectations were taken: ``"enumeration"`` or ``"moments"``."""
    _pattern: sympy.Matrix | None = field(default=None, repr=False)

    @property
    def algorithm(self) -> str:
        """Name of the rule derived."""
        return self.rule.name

    @property
    def sgd_diffusion(self) -> sympy.Matrix:
        """SGD's diffusion ``c(B) V``, which every rule of the family has at rho = 0."""
        c = algorithms.sampling_factor(self.batch, self.family.n, self.sampling)
        return c * self.family.covariance_V()

    @property
    def reference(self) -> sympy.Matrix | None:
        """What :meth:`verify` compares the drift with: the closed form, else (order 1) the
        first-order form of :func:`sdesam.symbolic.references.first_order_form`, else None."""
        return self.closed_form if self.closed_form is not None else self._pattern

    @property
    def formula(self) -> str | None:
        """What :attr:`reference` is, in words, with this derivation's c: e.g. ``-grad(f +
        rho/2 |grad f|^2 + c rho/2 tr V), c = c(m) = 1/3``; None when there is no reference."""
        if self.closed_form is None:
            return (None if self._pattern is None
                    else references.first_order_name(self.rule))
        if not self.rule.perturbed:
            return "-grad f" if self.order == 1 else "-grad(f + eta/4 |grad f|^2)"
        if self.noise_factor == 0:
            return "-grad(f + rho/2 |grad f|^2)"
        size = "m" if self.rule.micro else "B"
        return f"-grad(f + rho/2 |grad f|^2 + c rho/2 tr V), c = c({size}) = {self.noise_factor}"

    @property
    def degenerate(self) -> str | None:
        """Why this derivation cannot be verified (a non-finite parameter, a drift with
        NaN/infinite entries, or one identically zero while the full gradient is not), else None."""
        infinite = (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo)
        for name, value in (("lam", self.lam), ("batch", self.batch), ("micro", self.micro),
                            ("n", self.family.n)):
            if value is not None and sympy.sympify(value).has(*infinite):
                return f"{name} = {value} is not finite"
        if any(entry.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) for entry in self.drift):
            return "the drift has NaN or infinite entries"
        full = gradient(self.family.full_loss, self.variables)
        if _vanishes(self.drift) and not _vanishes(full):
            return "the drift is identically zero while the full gradient is not"
        return None

    def verify(self) -> bool:
        """True when the derived drift equals :attr:`reference` exactly (sympy simplification);
        never True for a :attr:`degenerate` derivation; a ValueError without a reference."""
        if self.reference is None:
            raise ValueError(
                f"no closed form to verify {self.algorithm} at order {self.order} against"
            )
        if self.degenerate is not None:
            return False
        return matrices_equal(self.drift, self.reference)

    @property
    def sgd_noise(self) -> bool:
        """Whether the rule's noise at rho = 0 is SGD's ``c(B) V`` (every rule but one whose
        whole descent gradient is Gibbs-weighted: its noise is that of the weighted gradient)."""
        return self.rule.descent_weights != "all"

    def verify_diffusion(self) -> bool:
        """True when the diffusion at rho = 0 is exactly SGD's ``c(B) V`` (expected only where
        :attr:`sgd_noise`)."""
        return matrices_equal(self.diffusion.subs(rho, 0), self.sgd_diffusion)

    @property
    def notes(self) -> list[str]:
        """Plain-language remarks on the result: why the diffusion vanishes, where it does."""
        notes = []
        if self.diffusion.is_zero_matrix:
            notes.append(self._zero_diffusion_reason())
        return notes

    def _zero_diffusion_reason(self) -> str:
        what = f"Sigma = 0 to rho^{self.diffusion_order}"
        c = algorithms.sampling_factor(self.batch, self.family.n, self.sampling)
        if sympy.simplify(c) == 0:
            reason = (f"{what}: B = N = {self.batch} without replacement, so every batch is the "
                      "whole data set and G at rho = 0 is the full gradient, the same in every "
                      "step (c(B) = (N-B)/(B(N-1)) = 0)")
            if self.rule.micro:
                reason += ("; the only randomness left is how the batch is split into "
                           "micro-batches, which moves G at O(rho), so Cov(G) = O(rho^2)")
            return reason
        if self.family.covariance_V().is_zero_matrix:
            return f"{what}: every sample has the same gradient (V = 0), so batches do not differ"
        return f"{what}: G does not depend on the batch to this order"

    def __repr__(self) -> str:
        sizes = f"batch={self.batch}" + (f", micro={self.micro}" if self.rule.micro else "")
        lam = f", lam={self.lam}" if self.rule.weighted else ""
        notes = "".join(f"\n  # {note}" for note in self.notes)
        return (f"Derivation({self.algorithm}, {sizes}, {self.sampling}, order={self.order}{lam},\n"
                f"  drift={list(self.drift)},\n  diffusion={self.diffusion.tolist()}){notes}")

    def latex(self) -> str:
        """The SDE as LaTeX: the closed (potential) form when there is one, then the entries,
        then the :attr:`notes` as LaTeX comments."""
        lines = [r"dX_t = b(X_t)\,dt + \sqrt{\eta\,\Sigma(X_t)}\,dW_t"]
        if self.closed_form is not None and self.rule.perturbed:
            c = sympy.latex(self.noise_factor) if self.noise_factor != 0 else None
            potential = r"f + \frac{\rho}{2}\|\nabla f\|^2"
            if c is not None:
                potential += rf" + \frac{{\rho}}{{2}}\left({c}\right)\operatorname{{tr}}V"
            lines.append(rf"b = -\nabla\left({potential}\right)")
        lines.append(r"b = " + sympy.latex(self.drift))
        lines.append(r"\Sigma = " + sympy.latex(self.diffusion))
        return " \\\\\n".join(lines) + "".join(f"\n% {note}" for note in self.notes)

    def large_lam_drift(self, at: dict[sympy.Symbol, Any]) -> sympy.Matrix:
        """The lam -> infinity limit of the order-1 drift of a Gibbs-weighted rule at the point
        ``at`` (a dict variable -> number): each batch's weight goes to its largest-norm sample;
        samples tied for the largest norm share it equally. See
        :func:`sdesam.symbolic.references.large_lam_drift`."""
        if self.family.generic or self.order != 1:
            raise ValueError("the lam -> infinity drift is given for concrete losses at order 1")
        size = self.micro if self.rule.micro else self.batch
        return references.large_lam_drift(self.rule, self.family, size, at)


def matrices_equal(a: sympy.Matrix, b: sympy.Matrix) -> bool:
    """Exact equality of two matrices of expressions: first as Laurent polynomials in shared
    placeholders for their non-polynomial parts (norms, exponentials: cheap, and enough when
    both sides are built from the same norms), else expand, and simplify only if needed."""
    if a.shape != b.shape:
        return False
    if any(sympy.sympify(e).has(sympy.Float) for e in (*a, *b)):
        return _numerically_equal(a, b)
    table: dict[sympy.Expr, sympy.Dummy] = {}
    for left, right in zip(a, b):
        # d|u|/dx gives sign(u) u'; u'/|u| * u is the same function wherever u != 0
        left, right = (sympy.sympify(e).replace(sympy.sign, lambda u: u / sympy.Abs(u))
                       for e in (left, right))
        if sympy.expand(_opaque_parts(left, table) - _opaque_parts(right, table)) == 0:
            continue
        entry = sympy.expand(left - right)
        if entry != 0 and sympy.simplify(entry) != 0:
            return False
    return True


FLOAT_TOLERANCE = 1e-9
"""Relative tolerance of :func:`matrices_equal` on matrices with float coefficients."""


def _numerically_equal(a: sympy.Matrix, b: sympy.Matrix, points: int = 3) -> bool:
    """Equality of two matrices with float coefficients (data entered as sympy Floats, whose
    rounding exact simplification cannot see through): every entry agrees to
    :data:`FLOAT_TOLERANCE`, relative, at ``points`` seeded points with every symbol in
    [0.1, 1] (rho, eta and lam positive), evaluated to 30 digits."""
    symbols = sorted(set().union(*(sympy.sympify(e).free_symbols for e in (*a, *b))), key=str)
    generator = random.Random(0)
    for _ in range(points):
        at = {s: sympy.Float(generator.uniform(0.1, 1.0), 30) for s in symbols}
        for left, right in zip(a, b):
            x, y = (complex(sympy.sympify(e).xreplace(at).evalf(30)) for e in (left, right))
            if abs(x - y) > FLOAT_TOLERANCE * max(1.0, abs(x), abs(y)):
                return False
    return True


def _vanishes(matrix: sympy.Matrix) -> bool:
    """Whether every entry is zero as a Laurent polynomial in its opaque parts (cheap; a zero
    in disguise is missed, and then :meth:`Derivation.verify` still compares with the reference)."""
    return all(sympy.expand(_opaque_parts(sympy.sympify(e), {})) == 0 for e in matrix)


def _opaque_parts(expr: sympy.Expr, table: dict[sympy.Expr, sympy.Dummy]) -> sympy.Expr:
    """``expr`` with every function application and every power that is not a monomial (roots,
    powers of sums) replaced, innermost first, by a placeholder shared through ``table``."""
    if expr.is_Atom:
        return expr
    args = tuple(_opaque_parts(arg, table) for arg in expr.args)
    rebuilt = expr.func(*args) if args != expr.args else expr
    monomial = rebuilt.is_Pow and rebuilt.exp.is_Integer and rebuilt.base.is_Symbol
    if isinstance(rebuilt, sympy.Function) or (rebuilt.is_Pow and not monomial
                                               and not (rebuilt.exp.is_Integer and rebuilt.exp > 0)):
        if rebuilt not in table:
            table[rebuilt] = sympy.Dummy("opaque")
        return table[rebuilt]
    return rebuilt


def derive(
    algorithm: str | Rule,
    losses: Sequence[sympy.Expr] | str,
    variables: Sequence[sympy.Symbol] | None = None,
    *,
    batch: Any,
    micro: Any = None,
    sampling: str = "with-replacement",
    order: int = 1,
    n: Any = None,
    diffusion_order: int | None = None,
    lam: Any = None,
    expectations: str = "auto",
    progress: bool = False,
) -> Derivation:
    """Derive drift and diffusion of ``algorithm``'s SDE on ``losses``.

    ``losses``: a list of concrete per-sample losses (smooth sympy expressions in which every
    one of ``variables`` occurs), or ``"generic"`` for arbitrary smooth losses, where the result
    is in terms of ``f``, its derivatives and the SGN moments ``C[a|b]`` (``C`` at first
    derivatives is V), with ``n`` samples (default: the symbol N) and ``batch``/``micro``
    integers or sympy symbols. ``micro`` only for m-rules (it must divide ``batch``); ``lam``
    only for Gibbs-weighted rules (RW-SAM: a finite number >= 0 or a sympy symbol; default the
    symbol lambda); ``n`` with concrete losses, if given, must be their count; ``order`` is the order in rho of the drift (eta enters from order 2).
    ``expectations``: one of :data:`EXPECTATIONS`; ``progress``: a progress bar over the
    enumerated index sets. Losses, variables and ``lam`` may not use a symbol named as one of
    the package's (:data:`sdesam.symbolic.symbols.RESERVED_NAMES`). Bad input raises
    :class:`sdesam.validation.InputError` before any work.
    """
    rule = SUPPORT.require(algorithms.get_rule(algorithm))
    algorithms.check_keywords(rule, lam=lam)
    algorithms.check_sampling(sampling)
    validation.int_at_least("order", order, 1)
    if diffusion_order is None:
        diffusion_order = order - 1
    validation.int_at_least("diffusion_order", diffusion_order, 0)
    validation.one_of("expectations", expectations, EXPECTATIONS)
    reserved = RESERVED_NAMES
    if rule.weighted:
        lam = lam_symbol if lam is None else sympy.sympify(validation.non_negative_or_symbol("lam", lam))
        validation.no_reserved_names("lam", lam, RESERVED_NAMES - {lam_symbol.name})
        reserved = reserved | {str(s) for s in lam.free_symbols}
    if expectations == "moments" and not moments_apply(rule):
        raise InputError(f"expectations='moments' needs a rule polynomial in the batch noise; "
                         f"{rule.name} normalises or reweights its ascent (use 'enumeration')")
    variables = validation.sympy_variables("variables", variables)
    validation.no_reserved_names("variables", variables, reserved)
    if isinstance(losses, str):
        if losses != GENERIC:
            raise InputError(f"losses must be a list of sympy expressions or {GENERIC!r}; got {losses!r}")
        if not moments_apply(rule):
            raise InputError(
                f"losses={GENERIC!r}: {rule.name} normalises or reweights its ascent direction, "
                "so its drift involves norms like E|grad f_S|, which have no expression in SGN "
                "moments; give concrete losses")
        family: Family = GenericFamily(
            variables, sympy.Symbol("N", positive=True, integer=True) if n is None else n, sampling)
        symbolic_sizes = any(isinstance(v, sympy.Basic) for v in (batch, micro))
    else:
        losses = validation.smooth_losses("losses", losses, variables, reserved)
        if n is not None and n != len(losses):
            raise InputError(f"n={n!r} does not match the {len(losses)} concrete losses: with "
                             f"concrete losses N is their count (n is for losses={GENERIC!r})")
        family = ConcreteFamily(losses, variables, sampling, progress=progress)
        symbolic_sizes = False
    if not symbolic_sizes:
        micro = algorithms.check_sizes(rule, batch, micro, None if family.generic else family.n,
                                       sampling)
    elif micro is None:
        micro = batch
    return _derive(rule, family, batch, micro, sampling, order, diffusion_order, lam, expectations)


def _derive(rule: Rule, family: Family, batch: Any, micro: Any, sampling: str, order: int,
            diffusion_order: int, lam: Any, expectations: str) -> Derivation:
    norm = references.MemoNorm()  # the reference form takes the derivation's norms again
    mean, drift, diffusion, used = _expectations(rule, family, batch, micro, order,
                                                 diffusion_order, lam, expectations, norm)
    size = micro if rule.micro else batch
    return Derivation(rule, family.variables, family, batch, micro, sampling, order,
                      diffusion_order, drift, diffusion, mean,
                      references.closed_form(rule, family, batch, micro, sampling, order),
                      references.noise_factor(rule, family, batch, micro, sampling), lam, used,
                      references.first_order_form(rule, family, size, order, lam, norm))


def _expectations(rule: Rule, family: Family, batch: Any, micro: Any, order: int,
                  diffusion_order: int, lam: Any, expectations: str,
                  norm: references.Norm) -> tuple[Any, Any, Any, str]:
    """(E G, drift, diffusion, how): through the SGN moments where asked for or (auto) where
    they apply, instantiated on the concrete losses; else by enumeration of the index sets."""
    concrete = not family.generic
    # the moment coefficients without replacement divide by N - 1 and N - 2
    small = concrete and family.sampling == "without-replacement" and family.n < 3
    wanted = expectations == "moments" or (expectations == "auto" and concrete and count_index_sets(
        family.n, micro if rule.micro else batch, family.sampling,
        pairs=rule.micro and micro != batch) > MOMENTS_ABOVE)
    if concrete and wanted and moments_apply(rule) and not small:
        generic = GenericFamily(family.variables, family.n, family.sampling)
        try:
            result = _expand(rule, generic, batch, micro, order, diffusion_order, lam, norm)
        except UnsupportedMoment:
            if expectations == "moments":
                raise
        else:
            return (*(generic.instantiate(m, family.losses).applyfunc(family.tidy) for m in result),
                    "moments")
    if expectations == "moments" and small:
        raise InputError(f"expectations='moments' needs N >= 3 without replacement; got N={family.n}")
    result = _expand(rule, family, batch, micro, order, diffusion_order, lam, norm)
    return (*(m.applyfunc(family.tidy) for m in result),
            "moments" if family.generic else "enumeration")


def _expand(rule: Rule, family: Family, batch: Any, micro: Any, order: int,
            diffusion_order: int, lam: Any, norm: references.Norm
            ) -> tuple[sympy.Matrix, sympy.Matrix, sympy.Matrix]:
    """(E G, drift, diffusion) of ``rule`` on ``family``, untidied (the caller tidies);
    ``norm`` takes the Euclidean norms."""
    x = sympy.Matrix(family.variables)
    size = micro if rule.micro else batch
    parts = sympy.simplify(sympy.sympify(batch) / micro) if rule.micro else 1
    expansion = max(order, diffusion_order)
    cache: dict[Any, TaylorGradient] = {}

    def grad(point: sympy.Matrix, part: Any) -> sympy.Matrix:
        if part not in cache:
            cache[part] = TaylorGradient(family.part_gradient(part), family.variables, expansion)
        displacement = point - x
        # a structural test: asking sympy whether a normalised ascent is zero costs more than
        # the whole expansion
        return cache[part](None if all(e == 0 for e in displacement) else displacement)

    def reweighted(point: sympy.Matrix, part: Any) -> sympy.Matrix:
        return gibbs_direction([grad(point, (i,)) for i in part], lam, norm)

    def weighted(point: sympy.Matrix, part: Any) -> sympy.Matrix:
        probs = gibbs_probabilities([grad(x, (i,)) for i in part], lam, norm)
        return sum((p * grad(point, (i,)) for p, i in zip(probs, part)),
                   sympy.zeros(len(family.variables), 1))

    def one(part: Any, k: int, drawn: Any = None) -> sympy.Matrix:
        """G of ``part`` (and ``drawn``) to ``rho^k``; at k = 0 that is G at rho = 0, which
        takes no ascent (the costly part: norms, Gibbs weights) at all."""
        g = algorithms.direction(rule, x, [part], rho if k else 0, grad, norm, reweighted,
                                 weighted, draw=lambda _: drawn)
        return truncate_matrix(g, rho, k)

    def draws(part: Any) -> list[tuple[Any, sympy.Expr]]:
        """Each draw of the rule's samples from ``part`` and its probability (one empty draw
        for a rule that draws nothing)."""
        if not rule.ascent_draw:
            return [(None, sympy.Integer(1))]
        probs = gibbs_probabilities([grad(x, (i,)) for i in part], lam, norm)
        return [(tuple(part[j] for j in positions), sympy.Mul(*(probs[j] for j in positions)))
                for positions in product(range(len(part)), repeat=rule.ascent_draw)]

    def direction(part: Any, k: int) -> sympy.Matrix:
        """E[G | part] to ``rho^k`` (the mean over the rule's draws)."""
        if not rule.ascent_draw:
            return one(part, k)
        return ConcreteFamily.weighted_sum((one(part, k, drawn), p) for drawn, p in draws(part))

    def outer(part: Any, k: int) -> sympy.Matrix:
        """E[G G^T | part] to ``rho^k`` over the rule's draws (not the outer product of their mean)."""
        terms = []
        for drawn, p in draws(part):
            g = one(part, k, drawn)
            terms.append((truncate_matrix(g * g.T, rho, k), p))
        return ConcreteFamily.weighted_sum(terms)

    mean = family.expect(lambda p: direction(p, order), size)
    drift = -mean
    if order >= 2:
        lower = truncate_matrix(mean, rho, order - 1)
        drift = drift - eta / 2 * lower.jacobian(family.variables) * lower
        drift = truncate_matrix(drift, rho, order)
    diffusion = _covariance(family, direction, outer if rule.ascent_draw else None, size, parts,
                            diffusion_order)
    return mean, drift, diffusion


def _covariance(family: ConcreteFamily | GenericFamily, direction: Any, outer: Any, size: Any,
                parts: Any, order: int) -> sympy.Matrix:
    """Cov(G) to ``rho^order``, from one micro-batch and (for J > 1 parts) one pair of them;
    ``direction(part, order)`` is E[G | part] and ``outer(part, order)`` E[G G^T | part] (None:
    G is fixed by the part, so it is the outer product of ``direction``)."""
    memo: dict[Any, sympy.Matrix] = {}

    def g(part: Any) -> sympy.Matrix:
        if part not in memo:
            memo[part] = direction(part, order)
        return memo[part]

    mean = family.expect(g, size)
    outer_mean = mean * mean.T
    if outer is None:
        def outer(p: Any, k: int) -> sympy.Matrix:
            return truncate_matrix(g(p) * g(p).T, rho, k)

    covariance = family.expect(lambda p: outer(p, order), size) - outer_mean
    if parts != 1:
        if family.sampling == "with-replacement":
            cross = sympy.zeros(*covariance.shape)  # independent micro-batches
        else:
            cross = family.expect_pair(lambda p, q: truncate_matrix(g(p) * g(q).T, rho, order),
                                       size) - outer_mean
        covariance = (covariance + (parts - 1) * cross) / parts
    # expanded, except entries with Gibbs weights (exponentials of norms), whose expansion
    # (the square of a weighted average) costs minutes and reads no better
    return truncate_matrix(covariance, rho, order).applyfunc(
        lambda e: e if e.has(sympy.exp) else sympy.expand(e))
