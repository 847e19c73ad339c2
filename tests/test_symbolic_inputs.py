"""derive's inputs (issue 16): no non-finite temperature, no ignored n, no symbol that prints
as one of the package's own; and what a derivation says it is verified against."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import sympy

from sdesam.symbolic import derive, example_losses
from sdesam.symbolic.listing import SUMMARY_WIDTH, entry_text
from sdesam.symbolic.symbols import RESERVED, RESERVED_NAMES
from sdesam.validation import InputError

ROOT = Path(__file__).resolve().parents[1]
x, y = sympy.symbols("x y", real=True)


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), sympy.oo, -sympy.oo, sympy.nan,
                                 sympy.zoo, -1e-3])
def test_a_non_finite_or_negative_lam_is_refused(lam):
    losses, variables = example_losses(1)
    with pytest.raises(InputError, match=r"^lam must be a finite number >= 0"):
        derive("rw-sam", losses, variables, batch=2, lam=lam)


def test_verify_never_passes_with_a_non_finite_parameter():
    losses, variables = example_losses(1)
    d = derive("rw-sam", losses, variables, batch=2, lam=2)
    assert d.verify() and d.degenerate is None
    for field, value in (("lam", sympy.oo), ("lam", sympy.nan), ("batch", sympy.zoo)):
        broken = dataclasses.replace(d, **{field: value})
        assert f"{field} = {value} is not finite" == broken.degenerate
        assert broken.verify() is False


def test_n_must_be_the_number_of_concrete_losses():
    losses, variables = example_losses(1)
    with pytest.raises(InputError, match=r"^n=3 does not match the 4 concrete losses"):
        derive("usam", losses, variables, batch=2, n=3)
    assert derive("usam", losses, variables, batch=2, n=len(losses)).verify()


@pytest.mark.parametrize("reserved", sorted(RESERVED_NAMES))
@pytest.mark.parametrize("assumptions", [{}, {"real": True}])
def test_a_loss_using_a_reserved_name_is_refused_naming_it(reserved, assumptions):
    own = sympy.Symbol(reserved, **assumptions)
    assert own not in RESERVED       # another object than the package's, which the old check let through
    with pytest.raises(InputError, match=rf"^losses\[1\] uses the reserved symbol name\(s\) {reserved} "):
        derive("usam", [x**2 + y**2, (x - 1) ** 2 + own * x + y**2], [x, y], batch=1)


def test_the_issue_example_is_refused():
    rho = sympy.Symbol("rho")
    with pytest.raises(InputError, match="reserved symbol name.*rho"):
        derive("usam", [x**2 + rho * x, (x - 1) ** 2], [x], batch=1)


def test_variables_and_lam_may_not_use_reserved_names():
    eta = sympy.Symbol("eta", real=True)
    with pytest.raises(InputError, match=r"^variables uses the reserved symbol name\(s\) eta"):
        derive("usam", "generic", [x, eta], batch=2)
    losses, variables = example_losses(1)
    with pytest.raises(InputError, match=r"^lam uses the reserved symbol name\(s\) rho"):
        derive("rw-sam", losses, variables, batch=2, lam=sympy.Symbol("rho", positive=True))


def test_a_user_temperature_symbol_is_reserved_in_the_losses():
    temperature = sympy.Symbol("T", positive=True)
    with pytest.raises(InputError, match=r"^losses\[0\] uses the reserved symbol name\(s\) T"):
        derive("rw-sam", [x**2 + sympy.Symbol("T") * x, (x - 1) ** 2], [x], batch=1,
               lam=temperature)


def test_formula_names_the_closed_form_with_its_c():
    losses, variables = example_losses(2)
    d = derive("m-usam", losses, variables, batch=4, micro=2, sampling="without-replacement")
    n, m = len(losses), 2
    assert d.noise_factor == sympy.Rational(n - m, m * (n - 1))
    assert d.formula == f"-grad(f + rho/2 |grad f|^2 + c rho/2 tr V), c = c(m) = {d.noise_factor}"
    assert derive("n-usam", losses, variables, batch=2).formula == "-grad(f + rho/2 |grad f|^2)"
    assert derive("sgd", losses, variables, batch=2, order=2).formula == "-grad(f + eta/4 |grad f|^2)"
    assert derive("rw-sam", losses[:2], variables, batch=1, lam=1).formula == "-grad f - rho E[H_S u_S]"
    assert derive("usam", losses, variables, batch=2, order=2).formula is None


def test_the_readme_prints_the_closed_form_its_comment_promises():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\nfrom sdesam.symbolic import derive, example_losses\n(.*?)```",
                      text, flags=re.S).group(1)
    line = next(l for l in block.splitlines() if l.startswith("print(d.formula)"))
    promised = line.split("#", 1)[1].strip()
    losses, variables = example_losses(2)
    d = derive("m-usam", losses, variables, batch=4, micro=2, sampling="without-replacement")
    assert promised.startswith(d.formula)


def test_a_long_entry_is_summarised_by_its_leading_part_and_length():
    rho = RESERVED[0]
    long = x**2 - y + rho * sum(sympy.exp(k * x) * y**k for k in range(1, 200))
    text, summarised = entry_text(long, full=False)
    assert summarised and len(str(long)) > SUMMARY_WIDTH
    assert text == f"x**2 - y + O(rho) terms ({len(str(long)):,} characters in full)"
    assert entry_text(long, full=True) == (str(long), False)
    assert entry_text(x**2 + rho * y, full=False) == (str(x**2 + rho * y), False)
