"""derive refuses what it cannot derive honestly, and verify() cannot pass a degenerate result."""

import argparse

import pytest
import sympy

from sdesam.symbolic import derive, example_losses
from sdesam.symbolic.derivation import Derivation
from sdesam.validation import InputError

x, y = sympy.symbols("x y", real=True)


def test_a_variable_absent_from_every_loss_is_refused():
    with pytest.raises(InputError, match="variables y occur in none of the losses"):
        derive("usam", [(x - 1) ** 2, x**2], [x, y], batch=1)


@pytest.mark.parametrize("loss,culprit", [
    (sympy.Abs(x - 1), "Abs(x - 1)"),
    (x**2 + sympy.sign(x), "sign(x)"),
    (sympy.Piecewise((x**2, x > 0), (0, True)), "Piecewise"),
    (x * sympy.Heaviside(x), "Heaviside(x)"),
    (sympy.Max(x, 0) ** 2, "Max(0, x)"),
    (sympy.floor(x) * x, "floor(x)"),
])
def test_non_smooth_losses_are_refused_naming_the_sub_expression(loss, culprit):
    with pytest.raises(InputError, match=r"losses\[1\] is not smooth.*" + culprit.replace("(", r"\(").replace(")", r"\)")):
        derive("usam", [x**2, loss], [x], batch=1)


def test_non_smooth_gradient_is_refused():
    step = sympy.Function("step")
    step.fdiff = lambda self, argindex=1: sympy.DiracDelta(self.args[0])
    with pytest.raises(InputError, match=r"losses\[0\] is not smooth \(in its gradient\).*DiracDelta"):
        derive("usam", [step(x) + x**2], [x], batch=1)


def test_reserved_symbols_are_refused():
    rho = sympy.Symbol("rho", nonnegative=True)
    with pytest.raises(InputError, match="reserved symbol"):
        derive("usam", [x**2 + rho * x], [x], batch=1)


def test_verify_cannot_pass_a_zero_drift_when_the_gradient_is_not_zero():
    losses, variables = example_losses(1)
    d = derive("usam", losses, variables, batch=2)
    zeroed = Derivation(**{**d.__dict__, "drift": sympy.zeros(1, 1), "closed_form": sympy.zeros(1, 1)})
    assert zeroed.degenerate and not zeroed.verify()
    assert d.degenerate is None and d.verify()


def test_verify_without_reference_raises():
    losses, variables = example_losses(1)
    d = derive("usam", losses, variables, batch=1, order=2)
    assert d.reference is None
    with pytest.raises(ValueError, match="no closed form"):
        d.verify()


def test_zero_diffusion_says_why():
    losses, variables = example_losses(1)
    d = derive("m-usam", losses, variables, batch=4, micro=2, sampling="without-replacement")
    assert d.diffusion.is_zero_matrix
    assert "B = N = 4 without replacement" in repr(d) and "O(rho^2)" in d.latex()
    assert not derive("usam", losses, variables, batch=2).notes


def _args(*argv):
    from sdesam.symbolic.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv) + ["--no-progress"])


@pytest.mark.parametrize("argv,word", [(["sam", "--lam", "2"], "lam"), (["usam", "--micro", "2"], "micro"),
                                       (["sam", "--losses", "generic"], "losses")])
def test_cli_bad_input_is_an_input_error(argv, word):
    from sdesam.symbolic.cli import run

    with pytest.raises(InputError, match=word):
        run(_args(*argv))


def test_cli_returns_1_when_a_check_fails(monkeypatch, capsys):
    from sdesam.symbolic.cli import run

    monkeypatch.setattr(Derivation, "verify", lambda self: False)
    assert run(_args("usam", "--losses", "example-1d", "--batch", "2")) == 1
    assert "drift equals the closed form: False" in capsys.readouterr().out
