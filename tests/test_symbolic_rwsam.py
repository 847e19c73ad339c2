"""RW-SAM derived symbolically, against brute-force enumeration of its exact one-step map."""

import pytest
import sympy

from sdesam.symbolic import derive, example_losses, matrices_equal, rho
from sdesam.symbolic.step import enumerated_moments
from sdesam.symbolic.taylor import truncate_matrix

SAMPLINGS = ["with-replacement", "without-replacement"]


def three_losses():
    losses, variables = example_losses(1)
    return losses[:3], variables


@pytest.mark.parametrize("sampling", [
    pytest.param("with-replacement", marks=pytest.mark.slow), "without-replacement"])
def test_rw_sam_matches_enumeration_of_every_batch(sampling):
    losses, variables = three_losses()
    d = derive("rw-sam", losses, variables, batch=2, sampling=sampling, lam=2)
    mean, cov = enumerated_moments("rw-sam", losses, variables, 2, None, sampling, 1, lam=2)
    assert matrices_equal(d.drift, -truncate_matrix(mean, rho, 1))
    assert matrices_equal(d.diffusion, truncate_matrix(cov, rho, 0))
    assert d.verify() and d.verify_diffusion()
    assert d.drift[0].has(sympy.exp)  # the Gibbs weights are really there


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_rw_sam_at_lam_zero_is_sam(sampling):
    losses, variables = three_losses()
    rw = derive("rw-sam", losses, variables, batch=2, sampling=sampling, lam=0)
    sam = derive("sam", losses, variables, batch=2, sampling=sampling)
    assert matrices_equal(rw.drift, sam.drift)


def test_rw_sam_drift_with_symbolic_lam_verifies():
    losses, variables = three_losses()
    d = derive("rw-sam", losses, variables, batch=2, sampling="without-replacement")
    assert d.lam == sympy.Symbol("lambda", nonnegative=True) and d.drift[0].has(d.lam)
    assert d.verify()


def _numeric(matrix, at):
    return [float(sympy.N(entry.xreplace(at).subs(rho, 1), 30)) for entry in matrix]


@pytest.mark.parametrize("point", [(0, 0), (sympy.Rational(1, 2), -1)])
def test_large_lam_limit_is_the_drift_at_large_lam(point):
    x, y = sympy.symbols("x y", real=True)
    # at the origin samples 0 and 1 have gradients (-1, 0) and (0, -1): their norms tie, and
    # at a tie the softmax splits equally for every lam, as the limit does
    losses = [((x - 1) ** 2 + y**2) / 2, (x**2 + (y - 1) ** 2) / 2 + x**4 / 12,
              ((x + sympy.Rational(1, 4)) ** 2 + (y - sympy.Rational(1, 2)) ** 2) / 2 + y**3 / 6]
    at = dict(zip((x, y), point))
    lam = sympy.Symbol("lam", nonnegative=True)
    d = derive("rw-sam", losses, [x, y], batch=2, sampling="without-replacement", lam=lam)
    limit = _numeric(d.large_lam_drift(at), at)
    far = _numeric(d.drift.subs(lam, 300), at)
    near = _numeric(d.drift.subs(lam, 0), at)
    assert max(abs(a - b) for a, b in zip(far, limit)) < 1e-9
    assert max(abs(a - b) for a, b in zip(near, limit)) > 1e-3


def test_cli_derive_rw_sam_with_lam(capsys):
    from sdesam.symbolic.cli import add_arguments, run
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["rw-sam", "--lam", "2", "--losses", "example-1d", "--batch", "2",
                              "--no-progress"])
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "lam=2" in out and "first-order form: -grad f - rho E[H_S u_S]" in out \
        and "drift equals the first-order form: True" in out


def test_lam_is_refused_by_rules_without_gibbs_weights():
    from sdesam.validation import InputError

    losses, variables = three_losses()
    with pytest.raises(InputError, match="lam"):
        derive("sam", losses, variables, batch=2, lam=2)
