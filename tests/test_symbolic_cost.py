"""The cheap ways of taking expectations give exactly what the plain enumeration gives."""

from unittest import mock

import pytest
import sympy

from sdesam.symbolic import derive
from sdesam.symbolic import families, references, taylor
from sdesam.symbolic.families import ConcreteFamily

x = sympy.Symbol("x", real=True)


def losses_of(n):
    return [(x - (i % 5 - 2)) ** 2 / 2 + sympy.Rational(i % 3 - 1, 2) * x**3 / 3 + x**4 / 12
            for i in range(n)]


def running_sum(terms):
    total = None
    for matrix, p in terms:
        total = matrix * p if total is None else total + matrix * p
    return total


@pytest.mark.parametrize("algorithm,micro", [("m-usam", 2), ("m-sam", 2)])
def test_collected_sum_is_identical_to_the_running_sum(algorithm, micro):
    args = dict(batch=4, micro=micro, sampling="without-replacement", expectations="enumeration")
    new = derive(algorithm, losses_of(5), [x], **args)
    with mock.patch.object(ConcreteFamily, "weighted_sum", staticmethod(running_sum)):
        old = derive(algorithm, losses_of(5), [x], **args)
    assert new.drift == old.drift and new.diffusion == old.diffusion


@pytest.mark.parametrize("algorithm,batch,micro,order,sampling", [
    ("m-usam", 4, 2, 1, "with-replacement"), ("m-usam", 4, 2, 1, "without-replacement"),
    ("m-usam", 4, 2, 2, "without-replacement"),
    pytest.param("usam", 2, None, 2, "with-replacement", marks=pytest.mark.slow),
    pytest.param("m-usam", 4, 2, 2, "with-replacement", marks=pytest.mark.slow),
])
def test_moments_on_concrete_losses_are_identical_to_enumeration(algorithm, batch, micro, order,
                                                                  sampling):
    args = dict(batch=batch, micro=micro, sampling=sampling, order=order)
    moments = derive(algorithm, losses_of(6), [x], expectations="moments", **args)
    enumerated = derive(algorithm, losses_of(6), [x], expectations="enumeration", **args)
    assert moments.expectations == "moments" and enumerated.expectations == "enumeration"
    assert moments.drift == enumerated.drift and moments.diffusion == enumerated.diffusion
    assert moments.expected_direction == enumerated.expected_direction


def test_auto_takes_moments_only_where_enumeration_is_costlier():
    args = dict(batch=4, micro=2, sampling="without-replacement")
    assert derive("m-usam", losses_of(4), [x], **args).expectations == "enumeration"
    big = derive("m-usam", losses_of(12), [x], **args)
    assert big.expectations == "moments" and big.verify()


@pytest.mark.slow
def test_auto_falls_back_to_enumeration_beyond_third_moments():
    from sdesam.symbolic.moments import UnsupportedMoment

    args = dict(batch=1, sampling="with-replacement", order=3)
    assert derive("usam", losses_of(26), [x], **args).expectations == "enumeration"
    with pytest.raises(UnsupportedMoment, match="degree"):
        derive("usam", losses_of(26), [x], expectations="moments", **args)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_over_index_sets_is_switched_by_progress(progress):
    seen = []

    def recording(items, *, show, **options):
        seen.append(show)
        return items

    with mock.patch.object(families, "progress_bar", recording):
        derive("m-usam", losses_of(4), [x], batch=4, micro=2, sampling="without-replacement",
               progress=progress)
    assert seen and all(shown is progress for shown in seen)


@pytest.mark.parametrize("algorithm,options", [("sam", {}), ("m-sam", {"micro": 2}),
                                               ("rw-sam", {"lam": 2})])
def test_sam_family_shortcuts_are_identical_to_the_full_way(algorithm, options):
    """The SAM family's shortcuts (norms memoised per derivation, a direction already of the
    order asked for not re-truncated, a batch's derivatives from its samples', memoised)
    change nothing: the full way -- every norm taken afresh, every truncation
    differentiating, every part's loss differentiated where it is needed -- gives the very
    same drift and diffusion."""
    def differentiated(family, kind, part):
        loss = family.part_loss(part)
        return (taylor.gradient(loss, family.variables) if kind == "gradient"
                else sympy.hessian(loss, family.variables))

    args = dict(batch=4, sampling="without-replacement", expectations="enumeration", **options)
    new = derive(algorithm, losses_of(5), [x], **args)
    with mock.patch.object(taylor, "polynomial_degree", lambda expr, symbol: None), \
            mock.patch.object(references, "MemoNorm", lambda: references.norm), \
            mock.patch.object(ConcreteFamily, "_part_derivative", differentiated):
        old = derive(algorithm, losses_of(5), [x], **args)
    assert new.drift == old.drift and new.diffusion == old.diffusion
    assert new.verify()


def test_polynomial_degree_reads_the_tree_and_refuses_non_polynomials():
    rho = sympy.Symbol("rho")
    assert taylor.polynomial_degree(x**2 + rho * (x + rho) ** 2, rho) == 3
    assert taylor.polynomial_degree(x / sympy.Abs(x), rho) == 0
    assert taylor.polynomial_degree(sympy.exp(rho) + rho, rho) is None
    assert taylor.polynomial_degree(x / (1 + rho), rho) is None
    expr = x * (1 + rho * x) ** 2
    assert sympy.expand(taylor.truncate(expr, rho, 1) - (x + 2 * rho * x**2)) == 0
    assert taylor.truncate(expr, rho, 2) is expr


def test_part_derivatives_from_the_samples_are_those_of_the_part_loss():
    """Exact coefficients: a batch's gradient and Hessian, the mean of its samples', are
    structurally what differentiating its loss gives (also for non-polynomial losses)."""
    y = sympy.Symbol("y", real=True)
    losses = [sympy.log(1 + sympy.exp(-x * (i - 2))) + x**2 * y / (i + 1) + sympy.sin(y) * i
              for i in range(4)]
    family = ConcreteFamily(losses, [x, y], "with-replacement")
    for part in [(0, 1), (2, 2, 3), (0, 1, 2, 3)]:
        loss = family.part_loss(part)
        assert family.part_gradient(part) == sympy.Matrix([loss.diff(x), loss.diff(y)])
        assert family.part_hessian(part) == sympy.hessian(loss, [x, y])


def test_matrix_product_is_sympys():
    y = sympy.Symbol("y", real=True)
    a = sympy.Matrix([[x, 0], [y**2, x * y]])
    b = sympy.Matrix([[x / sympy.Abs(x + y), 1], [0, sympy.exp(y)]])
    assert references.matrix_product(a, b) == a * b
    assert references.matrix_product(a, b[:, 0]) == a * b[:, 0]


def test_a_common_positive_denominator_leaves_the_root():
    """|A/S| = |A|/S for S > 0: one dimension gives sympy's own expression, two dimensions
    the same value; a denominator of unknown sign stays inside the root."""
    y = sympy.Symbol("y", real=True)
    total = sympy.exp(x) + sympy.exp(2 * y)
    one = sympy.Matrix([(x**3 - y) / total])
    two = sympy.Matrix([(x**3 - y) / total, (x * y + 1) / total])
    assert references.common_denominator(two) == total
    assert references.MemoNorm()(one) == references.norm(one)
    at = {x: sympy.Rational(3, 10), y: sympy.Rational(-7, 10)}
    assert abs(sympy.N((references.MemoNorm()(two) - references.norm(two)).xreplace(at))) < 1e-12
    assert references.common_denominator(sympy.Matrix([x / (x + y), y / (x + y)])) is None
    assert references.common_denominator(sympy.Matrix([x / total, y])) is None


def test_one_dimensional_norm_of_a_sum_is_sympys_square_root():
    """The 1-D shortcut of ``references.norm`` gives exactly sympy's sqrt(e^2): the sign known
    (either way), a leading minus taken out, Gibbs numerators, and what it leaves to sympy
    (products, a symbol of unknown realness, a complex entry, vectors)."""
    y = sympy.Symbol("y")
    gibbs = (x * sympy.exp(2 * sympy.Abs(x)) - (x - 2) * sympy.exp(sympy.Abs(x - 2)))
    entries = [x + 1, -x - 1, 1 - x, -2 * x - 4, sympy.Rational(1, 3) - x / 2, -x**3 / 3 - x + 2,
               x**2 + 1, -x**2 - 1, -sympy.Abs(x) - 1, x - sympy.Abs(x), sympy.exp(x) + 1,
               gibbs, -gibbs, gibbs / (1 + sympy.exp(x)), 3 * (x - 1), y + 1, sympy.I * x + 1]
    for e in entries:
        assert references.norm(sympy.Matrix([e])) == sympy.sqrt(e**2), e
    v = sympy.Matrix([x - 1, -x])
    assert references.norm(v) == sympy.sqrt(v.dot(v))
    # the one kind written differently: a constant numerator over a common denominator, which
    # sympy turns into a quotient; the value is the same
    e = 1 / (x**2 + 1) - 1 / (x**2 + 2)
    assert references.norm(sympy.Matrix([e])) != sympy.sqrt(e**2)
    assert sympy.simplify(references.norm(sympy.Matrix([e])) - sympy.sqrt(e**2)) == 0
