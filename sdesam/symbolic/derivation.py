"""Derive the (eta, rho) SDE of a SAM-family rule: ``dX = b(X) dt + sqrt(eta Sigma(X)) dW``.

The update ``x' = x - eta G`` is built by :func:`sdesam.algorithms.direction` -- the same code
the simulations and optimizers are tested against -- with sympy gradients expanded in rho
(:mod:`sdesam.symbolic.taylor`). Then

- drift ``b = -E[G]`` to order ``rho^order``; for ``order >= 2`` the first correction in eta,
  ``-(eta/2) J(E G) E G`` (J the Jacobian), which makes the SDE match the discrete map to
  second weak order (for SGD it gives the known ``-grad(f + eta/4 |grad f|^2)``);
- diffusion ``Sigma = Cov(G)`` to order ``rho^diffusion_order`` (``order - 1`` by default: the
  leading term at order 1, its O(rho) correction from order 2 on). For m-rules with
  J = B/m micro-batches, ``Cov(G) = (Var(G_1) + (J-1) Cov(G_1, G_2)) / J`` by exchangeability.

Expectations use one micro-batch (linearity) or one pair of them (the covariance), never a
whole enumeration of batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import sympy

from .. import algorithms
from ..algorithms import Rule
from .families import ConcreteFamily, GenericFamily
from .symbols import eta, rho
from .taylor import TaylorGradient, gradient, truncate_matrix

GENERIC = "generic"


def symbolic_support(rule: Rule) -> bool:
    """Whether :func:`derive` can derive ``rule`` (every registered rule but Gibbs-weighted ones)."""
    return not rule.weighted


def __getattr__(name: str) -> Any:
    """``SYMBOLIC_ALGORITHMS``: the registered rules :func:`derive` supports, read at access time."""
    if name == "SYMBOLIC_ALGORITHMS":
        return algorithms.rule_names(symbolic_support)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve_rule(algorithm: str | Rule) -> Rule:
    rule = algorithms.get_rule(algorithm)
    if not symbolic_support(rule):
        raise ValueError(
            f"algorithm must be one of {', '.join(algorithms.rule_names(symbolic_support))} or an "
            f"sdesam.algorithms.Rule without Gibbs weights; got {rule.name!r}"
        )
    return rule


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


@dataclass
class Derivation:
    """The derived SDE of one rule on one loss family; keep working with any field in sympy."""

    rule: Rule
    variables: list[sympy.Symbol]
    family: ConcreteFamily | GenericFamily
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
        """What :meth:`verify` compares the drift with: the closed form, else (SAM variants,
        order 1, concrete losses) ``-grad(f + rho E|grad f_S|)``, else None."""
        return self.closed_form if self.closed_form is not None else self._pattern

    def verify(self) -> bool:
        """True when the derived drift equals :attr:`reference` exactly (sympy simplification)."""
        if self.reference is None:
            raise ValueError(
                f"no closed form to verify {self.algorithm} at order {self.order} against"
            )
        return matrices_equal(self.drift, self.reference)

    def verify_diffusion(self) -> bool:
        """True when the diffusion at rho = 0 is exactly SGD's ``c(B) V``."""
        return matrices_equal(self.diffusion.subs(rho, 0), self.sgd_diffusion)

    def latex(self) -> str:
        """The SDE as LaTeX: the closed (potential) form when there is one, then the entries."""
        lines = [r"dX_t = b(X_t)\,dt + \sqrt{\eta\,\Sigma(X_t)}\,dW_t"]
        if self.closed_form is not None and self.rule.ascent != "none":
            c = sympy.latex(self.noise_factor) if self.noise_factor != 0 else None
            potential = r"f + \frac{\rho}{2}\|\nabla f\|^2"
            if c is not None:
                potential += rf" + \frac{{\rho}}{{2}}\left({c}\right)\operatorname{{tr}}V"
            lines.append(rf"b = -\nabla\left({potential}\right)")
        lines.append(r"b = " + sympy.latex(self.drift))
        lines.append(r"\Sigma = " + sympy.latex(self.diffusion))
        return " \\\\\n".join(lines)


def matrices_equal(a: sympy.Matrix, b: sympy.Matrix) -> bool:
    """Exact equality of two matrices of expressions (expand first, simplify only if needed)."""
    if a.shape != b.shape:
        return False
    for entry in (a - b):
        # d|u|/dx gives sign(u) u'; u'/|u| * u is the same function wherever u != 0
        entry = sympy.expand(entry.replace(sympy.sign, lambda u: u / sympy.Abs(u)))
        if entry != 0 and sympy.simplify(entry) != 0:
            return False
    return True


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
) -> Derivation:
    """Derive drift and diffusion of ``algorithm``'s SDE on ``losses``.

    ``losses``: a list of concrete per-sample losses (sympy expressions in ``variables``), or
    ``"generic"`` for arbitrary smooth losses, where the result is in terms of ``f``, its
    derivatives and the SGN moments ``C[a|b]`` (``C`` at first derivatives is V), with ``n``
    samples (default: the symbol N) and ``batch``/``micro`` integers or sympy symbols.
    ``micro`` only for m-rules (it must divide ``batch``); ``order`` is the order in rho of
    the drift (eta enters from order 2).
    """
    rule = _resolve_rule(algorithm)
    algorithms.check_sampling(sampling)
    _check_int("order", order, 1)
    if diffusion_order is None:
        diffusion_order = order - 1
    _check_int("diffusion_order", diffusion_order, 0)
    if isinstance(losses, str):
        if losses != GENERIC:
            raise ValueError(f"losses must be a list of sympy expressions or {GENERIC!r}; got {losses!r}")
        if not variables:
            raise ValueError("variables must name at least one sympy Symbol")
        if rule.normalized:
            raise ValueError(
                f"{rule.name} normalises its ascent direction, so its drift involves "
                "E|grad f_S|, which has no expression in SGN moments; give concrete losses"
            )
        family: ConcreteFamily | GenericFamily = GenericFamily(
            variables, sympy.Symbol("N", positive=True, integer=True) if n is None else n, sampling)
        symbolic_sizes = any(isinstance(v, sympy.Basic) for v in (batch, micro))
    else:
        if not variables:
            raise ValueError("variables must name at least one sympy Symbol")
        if len(losses) < 1:
            raise ValueError("losses must contain at least one per-sample loss")
        family = ConcreteFamily(losses, variables, sampling)
        symbolic_sizes = False
    if not symbolic_sizes:
        micro = algorithms.check_sizes(rule, batch, micro, None if family.generic else family.n,
                                       sampling)
    elif micro is None:
        micro = batch
    return _derive(rule, family, batch, micro, sampling, order, diffusion_order)


def _derive(rule: Rule, family: ConcreteFamily | GenericFamily, batch: Any, micro: Any,
            sampling: str, order: int, diffusion_order: int) -> Derivation:
    x = sympy.Matrix(family.variables)
    size = micro if rule.micro else batch
    parts = sympy.simplify(sympy.sympify(batch) / micro) if rule.micro else 1
    expansion = max(order, diffusion_order)
    cache: dict[Any, TaylorGradient] = {}

    def grad(point: sympy.Matrix, part: Any) -> sympy.Matrix:
        if part not in cache:
            cache[part] = TaylorGradient(family.part_loss(part), family.variables, expansion)
        displacement = point - x
        return cache[part](None if displacement.is_zero_matrix else displacement)

    def norm(v: sympy.Matrix) -> sympy.Expr:
        return sympy.sqrt(v.dot(v))

    def direction(part: Any, k: int) -> sympy.Matrix:
        return truncate_matrix(algorithms.direction(rule, x, [part], rho, grad, norm), rho, k)

    mean = family.expect(lambda p: direction(p, order), size)
    drift = -mean
    if order >= 2:
        lower = truncate_matrix(mean, rho, order - 1)
        drift = drift - eta / 2 * lower.jacobian(family.variables) * lower
        drift = truncate_matrix(drift, rho, order)
    drift = drift.applyfunc(family.tidy)

    diffusion = _covariance(family, direction, size, parts, diffusion_order).applyfunc(family.tidy)
    closed = _closed_form(rule, family, batch, micro, sampling, order)
    pattern = _sam_pattern(rule, family, size, order)
    factor = _noise_factor(rule, family, batch, micro, sampling)
    return Derivation(rule, family.variables, family, batch, micro, sampling, order,
                      diffusion_order, drift, diffusion, mean.applyfunc(family.tidy),
                      closed, factor, pattern)


def _covariance(family: ConcreteFamily | GenericFamily, direction: Any, size: Any, parts: Any,
                order: int) -> sympy.Matrix:
    """Cov(G) to ``rho^order``, from one micro-batch and (for J > 1 parts) one pair of them."""
    memo: dict[Any, sympy.Matrix] = {}

    def g(part: Any) -> sympy.Matrix:
        if part not in memo:
            memo[part] = direction(part, order)
        return memo[part]

    mean = family.expect(g, size)
    outer_mean = mean * mean.T
    covariance = family.expect(lambda p: truncate_matrix(g(p) * g(p).T, rho, order), size) - outer_mean
    if parts != 1:
        if family.sampling == "with-replacement":
            cross = sympy.zeros(*covariance.shape)  # independent micro-batches
        else:
            cross = family.expect_pair(lambda p, q: truncate_matrix(g(p) * g(q).T, rho, order),
                                       size) - outer_mean
        covariance = (covariance + (parts - 1) * cross) / parts
    return truncate_matrix(covariance, rho, order).applyfunc(sympy.expand)


def _noise_factor(rule: Rule, family: ConcreteFamily | GenericFamily, batch: Any, micro: Any,
                  sampling: str) -> Any:
    """c(s) of the tr V term: the sample the ascent and descent share (m or B), else 0."""
    if rule.ascent != "part":
        return sympy.Integer(0)
    return algorithms.sampling_factor(micro if rule.micro else batch, family.n, sampling)


def _closed_form(rule: Rule, family: ConcreteFamily | GenericFamily, batch: Any, micro: Any,
                 sampling: str, order: int) -> sympy.Matrix | None:
    """The paper's closed-form drift where one exists (the USAM family and SGD), else None.

    Order 1: ``-grad(f + rho/2 |grad f|^2 + c rho/2 tr V)`` (c from :func:`_noise_factor`);
    SGD at order 2: ``-grad(f + eta/4 |grad f|^2)``.
    """
    if rule.normalized:
        return None
    f = family.full_loss
    g = gradient(f, family.variables)
    if rule.ascent == "none":
        potential = {1: f, 2: f + eta / 4 * g.dot(g)}.get(order)
    elif order == 1:
        c = _noise_factor(rule, family, batch, micro, sampling)
        potential = f + rho / 2 * g.dot(g) + c * rho / 2 * family.trace_V()
    else:
        potential = None
    if potential is None:
        return None
    return -gradient(potential, family.variables).applyfunc(family.tidy)


def _sam_pattern(rule: Rule, family: ConcreteFamily | GenericFamily, size: Any,
                 order: int) -> sympy.Matrix | None:
    """For SAM variants at order 1 on concrete losses: ``-grad(f + rho E|grad f_S|)``.

    This is the pattern the paper describes (no closed form: E|grad f_S| is an expectation of
    norms), computed here by enumeration; n-SAM uses ``|grad f|`` itself.
    """
    if not rule.normalized or family.generic or order != 1:
        return None
    variables = family.variables

    def grad_norm(part: Any) -> sympy.Matrix:
        g = gradient(family.part_loss(part), variables)
        return sympy.Matrix([sympy.sqrt(g.dot(g))])

    expected_norm = grad_norm(None)[0] if rule.ascent == "full" else family.expect(grad_norm, size)[0]
    return -gradient(family.full_loss + rho * expected_norm, variables)
