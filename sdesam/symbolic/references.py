"""What a derived drift is checked against: forms computed without the rho-expansion.

- the closed (potential) form of the USAM family and SGD, ``-grad(f + rho/2 |grad f|^2 +
  c rho/2 tr V)`` (SGD at order 2: ``-grad(f + eta/4 |grad f|^2)``);
- for the plain SAM variants, ``-grad(f + rho E|grad f_S|)`` (no closed form: an expectation of
  norms, computed by enumeration);
- for every other rule at order 1 (RW-SAM, rules with an elementwise scale), the first-order
  form ``-grad f - rho E_S[H_S u_S]``: ``H_S`` the Hessian of the part's loss and ``u_S`` the
  rule's own perturbation direction at x (scaled, normalised, Gibbs-weighted, as the rule says),
  taken from :func:`sdesam.algorithms.perturbed_point` with exact gradients -- no Taylor series.
  Gibbs weights on the descent gradient put ``sum_i p_i H_i`` in place of ``H_S`` (and, on the
  whole descent gradient, ``-E_S[sum_i p_i grad f_i]`` in place of ``-grad f``); a drawn
  perturbation averages ``u_S`` over its draws with their probabilities;
- RW-SAM's drift in the limit lam -> infinity, at a point.
"""

from __future__ import annotations

from itertools import product
from typing import Any, Callable

import sympy

from .. import algorithms
from ..algorithms import Rule
from .families import ConcreteFamily, GenericFamily
from .gibbs import gibbs_direction, gibbs_probabilities
from .symbols import eta, rho
from .taylor import gradient

Family = ConcreteFamily | GenericFamily


def norm(v: sympy.Matrix) -> sympy.Expr:
    """Euclidean norm of a column vector.

    A single real entry that is a sum (a batch gradient, a Gibbs-weighted numerator) gives
    |e| directly: e or -e where the sign is known, else Abs of e with its leading minus sign
    taken out. That is the value of sympy's sqrt(e^2), and for the sums a derivation meets
    the very expression too (tested); sympy gets there through a sign simplification of the
    whole sum that costs ~2.5x these queries (most of RW-SAM's 1-D derivation), and only a
    sum whose numerator over a common denominator is constant would it write differently
    (as a quotient of Abs). Anything else goes through sympy's square root."""
    entry = v[0] if len(v) == 1 else None
    if entry is not None and entry.is_Add and entry.is_extended_real:
        if entry.is_extended_nonnegative:
            return entry
        if entry.is_extended_nonpositive:
            return -entry
        return sympy.Abs(-entry if entry.could_extract_minus_sign() else entry, evaluate=False)
    return sympy.sqrt(v.dot(v))


Norm = Callable[[sympy.Matrix], sympy.Expr]


class MemoNorm:
    """:func:`norm`, each distinct vector's computed once, with a common positive denominator
    taken out of the root (:func:`common_denominator`). Within one derivation a sample's
    gradient recurs in every batch that holds it and the reference form takes the very norms
    the derivation took, while sympy's square root is costly: it asks the sign of every
    factor, and of a Gibbs-weighted direction ``(sum_i s_i g_i) / S`` it costs ~3x the root
    of the numerators (``|v| = |S v| / S`` for S > 0: in one dimension the very expression
    sympy gives, ``Abs(A)/S``; in more, ``sqrt(A_1^2 + A_2^2)/S`` for ``sqrt(A_1^2/S^2 +
    A_2^2/S^2)``). Keep one per derivation: the memo holds every vector it saw."""

    def __init__(self) -> None:
        self._norms: dict[tuple[sympy.Expr, ...], sympy.Expr] = {}

    def __call__(self, v: sympy.Matrix) -> sympy.Expr:
        key = tuple(v)
        if key not in self._norms:
            total = common_denominator(v)
            self._norms[key] = norm(v) if total is None else norm(v * total) / total
        return self._norms[key]


def common_denominator(v: sympy.Matrix) -> sympy.Expr | None:
    """A positive S such that every nonzero entry of ``v`` is a product holding the factor
    ``1/S`` (read off the tree, as a Gibbs-weighted direction is built), else None."""
    shared = None
    for entry in v:
        if entry == 0:
            continue
        if not entry.is_Mul:
            return None
        inverses = {f.base for f in entry.args if f.is_Pow and f.exp == -1}
        shared = inverses if shared is None else shared & inverses
        if not shared:
            return None
    return next((s for s in sorted(shared or (), key=sympy.default_sort_key) if s.is_positive),
                None)


def noise_factor(rule: Rule, family: Family, batch: Any, micro: Any, sampling: str) -> Any:
    """c(s) of the tr V term: the sample the ascent and descent share (m or B), else 0."""
    if not rule.noise_induced:
        return sympy.Integer(0)
    return algorithms.sampling_factor(micro if rule.micro else batch, family.n, sampling)


def closed_form(rule: Rule, family: Family, batch: Any, micro: Any, sampling: str,
                order: int) -> sympy.Matrix | None:
    """The paper's closed-form drift where one exists (:attr:`Rule.has_closed_form`), else None.

    Order 1: ``-grad(f + rho/2 |grad f|^2 + c rho/2 tr V)`` (c from :func:`noise_factor`);
    SGD at order 2: ``-grad(f + eta/4 |grad f|^2)``.
    """
    if not rule.has_closed_form:
        return None
    f = family.full_loss
    g = gradient(f, family.variables)
    if not rule.perturbed:
        potential = {1: f, 2: f + eta / 4 * g.dot(g)}.get(order)
    elif order == 1:
        c = noise_factor(rule, family, batch, micro, sampling)
        potential = f + rho / 2 * g.dot(g) + c * rho / 2 * family.trace_V()
    else:
        potential = None
    if potential is None:
        return None
    return -gradient(potential, family.variables).applyfunc(family.tidy)


def first_order_form(rule: Rule, family: Family, size: Any, order: int,
                     lam: Any, norm: Norm = norm) -> sympy.Matrix | None:
    """The order-1 drift of a rule without a closed form, from exact gradients and Hessians.

    Plain SAM variants (normalised, unscaled, unweighted), concrete losses:
    ``-grad(f + rho E|grad f_S|)`` (n-SAM: ``|grad f|``). Any other rule:
    ``-grad f - rho E_S[H_S u_S]`` over one part S of ``size`` (linearity), with ``u_S`` the
    rule's unit-rho perturbation. None at higher order, or where it needs norms of generic
    losses. ``norm``: how norms are taken (a derivation passes its :class:`MemoNorm`).
    """
    if rule.has_closed_form or order != 1 or (family.generic and rule.normalized):
        return None
    variables = family.variables
    if norm_potential(rule):
        def grad_norm(part: Any) -> sympy.Matrix:
            return sympy.Matrix([norm(family.part_gradient(part))])

        expected = grad_norm(None)[0] if rule.ascent == "full" else family.expect(grad_norm, size)[0]
        return -gradient(family.full_loss + rho * expected, variables)

    def gibbs(part: Any) -> list[sympy.Expr]:
        return gibbs_probabilities([family.part_gradient((i,)) for i in part],
                                   lam, norm)

    def curvature(part: Any) -> sympy.Matrix:
        if rule.descent_weights == "none":
            return family.part_hessian(part)
        return sum((p * family.part_hessian((i,))
                    for p, i in zip(gibbs(part), part)), sympy.zeros(len(variables)))

    def ascent(part: Any) -> sympy.Matrix:
        if not rule.ascent_draw:
            return unit_perturbation(rule, family, part, lam, norm=norm)
        probs = gibbs(part)
        total = sympy.zeros(len(variables), 1)
        for positions in product(range(len(part)), repeat=rule.ascent_draw):
            drawn = tuple(part[j] for j in positions)
            weight = sympy.Mul(*(probs[j] for j in positions))
            total += weight * unit_perturbation(rule, family, part, lam, drawn, norm)
        return total

    def curvature_times_ascent(part: Any) -> sympy.Matrix:
        return matrix_product(curvature(part), ascent(part))

    pushed = family.expect(curvature_times_ascent, size)
    if rule.descent_weights == "all":
        def weighted_gradient(part: Any) -> sympy.Matrix:
            return sum((p * family.part_gradient((i,))
                        for p, i in zip(gibbs(part), part)), sympy.zeros(len(variables), 1))

        return -family.expect(weighted_gradient, size) - rho * pushed
    return -gradient(family.full_loss, variables) - rho * pushed


def matrix_product(a: sympy.Matrix, b: sympy.Matrix) -> sympy.Matrix:
    """``a * b`` as sympy's sparse product forms it (each entry the sum of its nonzero
    products, in order), without its check of every entry of ``b`` for infinities (``0 * e``
    asks whether ``e`` is finite: costly on a normalised Gibbs ascent, never infinite here)."""
    return sympy.Matrix(a.rows, b.cols, lambda i, j: sympy.Add(*(
        a[i, k] * b[k, j] for k in range(a.cols) if a[i, k] != 0 and b[k, j] != 0)))


def norm_potential(rule: Rule) -> bool:
    """Whether a rule's first-order drift is ``-grad(f + rho E|grad f_S|)`` (the plain SAM
    variants: normalised, unscaled, unweighted) rather than ``-grad f - rho E[H_S u_S]``."""
    return rule.normalized and not rule.weighted and rule.scale is None


FIRST_ORDER_NAMES = {True: "-grad(f + rho E|grad f_S|)", False: "-grad f - rho E[H_S u_S]"}
"""How :func:`first_order_form` reads, by :func:`norm_potential` (rules without descent weights)."""


def first_order_name(rule: Rule) -> str:
    """How :func:`first_order_form` reads for ``rule``."""
    if rule.descent_weights == "all":
        return "-E[sum_i p_i grad f_i] - rho E[sum_i p_i H_i u_S]"
    if rule.descent_weights == "response":
        return "-grad f - rho E[sum_i p_i H_i u_S]"
    if rule.ascent_draw:
        return "-grad f - rho E[H_S u_S], u_S averaged over the draws"
    return FIRST_ORDER_NAMES[norm_potential(rule)]


def unit_perturbation(rule: Rule, family: Family, part: Any, lam: Any,
                      drawn: Any = None, norm: Norm = norm) -> sympy.Matrix:
    """The rule's perturbation at x for rho = 1 (``perturbed_point - x``), from exact gradients;
    ``drawn``: the samples a rule that draws its perturbation drew; ``norm`` as in
    :func:`first_order_form`."""
    x = sympy.Matrix(family.variables)

    def exact_grad(point: sympy.Matrix, members: Any) -> sympy.Matrix:
        return family.part_gradient(members)

    def reweighted(point: sympy.Matrix, members: Any) -> sympy.Matrix:
        return gibbs_direction([exact_grad(point, (i,)) for i in members], lam, norm)

    return algorithms.perturbed_point(rule, x, part, 1, exact_grad, norm, reweighted,
                                      draw=lambda _: drawn) - x


def large_lam_drift(rule: Rule, family: ConcreteFamily, size: int,
                    at: dict[sympy.Symbol, Any]) -> sympy.Matrix:
    """lim_{lam -> infinity} of a Gibbs-weighted rule's order-1 drift at the point ``at``.

    The weights of each batch go to its largest-norm sample; samples tied for the largest norm
    at ``at`` (including repeated draws of one index) share the weight equally, which is the
    limit of the softmax of equal scores. The result is ``-grad f - rho E_S[H_S u_S]`` with
    ``u_S`` the normalised mean gradient of the tied maximisers of batch S.
    """
    if not rule.weighted:
        raise ValueError(f"{rule.name} has no Gibbs weights, so no lam -> infinity limit")
    variables = family.variables

    def at_point(expr: Any) -> Any:
        return expr.xreplace(at) if hasattr(expr, "xreplace") else expr

    def pushed(part: Any) -> sympy.Matrix:
        grads = [at_point(gradient(family.part_loss((i,)), variables)) for i in part]
        norms = [norm(g) for g in grads]
        top = max(norms, key=lambda v: float(v))
        tied = [g for g, v in zip(grads, norms) if sympy.simplify(v - top) == 0]
        ascent = sum(tied, sympy.zeros(len(variables), 1)) / len(tied)
        if rule.scale is not None:
            ascent = algorithms.scaled(rule.scale, sympy.Matrix(variables).xreplace(at), ascent)
        unit = ascent / norm(ascent) if rule.normalized else ascent
        return at_point(sympy.hessian(family.part_loss(part), variables)) * unit

    gradient_at = at_point(gradient(family.full_loss, variables))
    return (-gradient_at - rho * family.expect(pushed, size)).applyfunc(sympy.simplify)
