"""The symbolic engine against independent exact enumeration of whole batches."""

import pytest
import sympy

from sdesam.symbolic import GENERIC, derive, example_losses, matrices_equal, rho
from sdesam.symbolic.gibbs import derive_gibbs_weights
from sdesam.symbolic.step import enumerated_moments
from sdesam.symbolic.taylor import truncate_matrix


CASES = [
    ("m-usam", 1, 4, 2, "with-replacement"),
    ("m-usam", 1, 4, 2, "without-replacement"),
    ("m-usam", 1, 3, 1, "without-replacement"),
    ("usam", 2, 2, None, "without-replacement"),
    ("n-usam", 1, 2, None, "with-replacement"),
    ("sam", 1, 2, None, "without-replacement"),
]


@pytest.mark.parametrize("algorithm,dim,batch,micro,sampling", CASES)
def test_drift_and_diffusion_match_enumeration_of_all_batches(algorithm, dim, batch, micro, sampling):
    losses, variables = example_losses(dim)
    order = 1 if algorithm == "sam" else 2
    d = derive(algorithm, losses, variables, batch=batch, micro=micro, sampling=sampling,
               order=1, diffusion_order=order - 1 if algorithm == "sam" else 1)
    mean, cov = enumerated_moments(algorithm, losses, variables, batch, micro, sampling, max(order - 1, 1))
    assert matrices_equal(d.drift, -truncate_matrix(mean, rho, 1))
    assert matrices_equal(d.diffusion, truncate_matrix(cov, rho, d.diffusion_order))


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
@pytest.mark.parametrize("algorithm", ["n-usam", "usam", "m-usam"])
def test_generic_closed_forms_with_symbolic_sizes(algorithm, sampling):
    B, m = sympy.symbols("B m", positive=True, integer=True)
    x, y = sympy.symbols("x y", real=True)
    d = derive(algorithm, GENERIC, [x, y], batch=B, micro=m if algorithm == "m-usam" else None,
               sampling=sampling)
    assert d.verify() and d.verify_diffusion()
    if algorithm == "m-usam":
        N = d.family.n
        expected = 1 / m if sampling == "with-replacement" else (N - m) / (m * (N - 1))
        assert sympy.simplify(d.noise_factor - expected) == 0


@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_generic_result_instantiated_equals_concrete_derivation(sampling):
    losses, variables = example_losses(1)
    g = derive("m-usam", GENERIC, variables, batch=4, micro=2, n=4, sampling=sampling, order=2)
    c = derive("m-usam", losses, variables, batch=4, micro=2, sampling=sampling, order=2)
    assert matrices_equal(g.family.instantiate(g.drift, losses), c.drift)
    assert matrices_equal(g.family.instantiate(g.diffusion, losses), c.diffusion)


@pytest.mark.parametrize("algorithm,micro", [("sgd", None), ("usam", None), ("m-usam", 1),
                                             ("m-usam", 2), ("n-sam", None), ("m-sam", 1)])
@pytest.mark.parametrize("sampling", ["with-replacement", "without-replacement"])
def test_leading_diffusion_is_sgds_for_every_rule(algorithm, micro, sampling):
    losses, variables = example_losses(2)
    d = derive(algorithm, losses, variables, batch=2, micro=micro, sampling=sampling)
    assert d.verify_diffusion()
    assert d.verify()


def test_usam_diffusion_with_equal_hessians_is_compagnoni_form():
    x, y = sympy.symbols("x y", real=True)
    H = sympy.Matrix([[2, 1], [1, 3]])
    centers = [(1, 0), (-1, 2), (0, -1)]
    losses = [((sympy.Matrix([x - a, y - b]).T * H * sympy.Matrix([x - a, y - b]))[0]) / 2
              for a, b in centers]
    d = derive("usam", losses, [x, y], batch=2, sampling="with-replacement", order=2)
    V = d.family.covariance_V()
    c = sympy.Rational(1, 2)
    assert matrices_equal(d.diffusion, c * V + rho * c * (H * V + V * H))


def test_sgd_second_order_drift():
    losses, variables = example_losses(1)
    d = derive("sgd", losses, variables, batch=2, order=2)
    assert d.closed_form is not None and d.verify()


def test_gibbs_weights_are_softmax():
    result = derive_gibbs_weights(3)
    assert result.matches_softmax and result.concave and result.uniform_at_zero


@pytest.mark.parametrize("kwargs,name", [
    (dict(algorithm="adam"), "algorithm"), (dict(algorithm="sam", micro=None, lam=2), "lam"),
    (dict(micro=3), "micro"), (dict(algorithm="usam", micro=2), "micro"),
    (dict(sampling="bootstrap"), "sampling"), (dict(order=0), "order"),
    (dict(losses="abstract"), "losses"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    losses, variables = example_losses(1)
    args = dict(algorithm="m-usam", losses=losses, variables=variables, batch=4, micro=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        derive(args.pop("algorithm"), args.pop("losses"), args.pop("variables"), **args)


def test_generic_sam_is_a_clear_error():
    with pytest.raises(ValueError, match="concrete losses"):
        derive("sam", GENERIC, [sympy.Symbol("x")], batch=2)


def test_cli_derive_prints_verified_drift(capsys):
    from sdesam.cli import main

    assert main(["derive", "m-usam", "--sampling", "without-replacement", "--latex"]) == 0
    out = capsys.readouterr().out
    assert "drift equals the closed form: True" in out and "c = c(m) = 1/3" in out
    assert r"\operatorname{tr}V" in out


def test_n_sam_one_dimensional_drift_verifies():
    losses, variables = example_losses(1)
    assert derive("n-sam", losses, variables, batch=2).verify()


@pytest.mark.slow
def test_all_derivation_scripts_verify_and_write_only_where_asked(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "derivations" / "run_all.py"
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "tex")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert sorted(p.name for p in (tmp_path / "tex").iterdir()) == sorted(
        f"{p.stem}.tex" for p in script.parent.glob("*.py") if p.name != "run_all.py")
