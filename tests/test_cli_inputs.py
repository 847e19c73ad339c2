"""Bad input on the command line (issue 16): one line naming the option, exit status 2, before
any work -- negative numbers included, which argparse took for options."""

from __future__ import annotations

import pytest

from sdesam.cli import OneLineParser, main


def sdesam(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``sdesam ARGV`` run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one-line error of a refused ``sdesam ARGV`` (asserting status 2 and one line)."""
    code, out, err = sdesam(capsys, *argv)
    assert code == 2 and not out, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("value", ["-1", "-0.5", "-.5", "-1e-3", "-2E+4", "-1.5e3", "-inf", "-NaN"])
def test_a_negative_number_is_an_option_value(value):
    parser = OneLineParser()
    parser.add_argument("--delta", type=float)
    parser.add_argument("position", nargs="?", type=float)
    assert str(parser.parse_args(["--delta", value]).delta) == str(float(value))
    assert str(parser.parse_args([value]).position) == str(float(value))


def test_an_option_is_still_an_option(capsys):
    parser = OneLineParser(prog="prog")
    parser.add_argument("--delta", type=float)
    parser.add_argument("-e", action="store_true")
    assert parser.parse_args(["-e"]).e
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--delta", "-e"])
    assert done.value.code == 2
    assert capsys.readouterr().err == "prog: error: argument --delta: expected one argument\n"


def test_train_refuses_a_negative_delta_by_name(capsys, tmp_path):
    out = tmp_path / "run"
    err = refused(capsys, "train", "--rule", "rw-sam", "--delta", "-1e-3", "--out", str(out))
    assert err.startswith("sdesam train: error:") and "delta" in err and "-0.001" in err
    assert "expected one argument" not in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e-3", "-2"])
def test_derive_refuses_a_non_finite_or_negative_lam(capsys, value):
    err = refused(capsys, "derive", "rw-sam", "--lam", value)
    assert err.startswith("sdesam derive: error: --lam must be a finite number >= 0"), err


def test_derive_refuses_a_negative_size_by_name(capsys):
    err = refused(capsys, "derive", "usam", "--batch", "-2")
    assert "argument --batch: expected a positive integer" in err and "'-2'" in err


def test_derive_refuses_a_temperature_named_as_a_package_symbol(capsys):
    err = refused(capsys, "derive", "rw-sam", "--lam", "rho")
    assert "lam uses the reserved symbol name(s) rho" in err


def test_derive_refuses_n_with_the_example_losses(capsys):
    err = refused(capsys, "derive", "usam", "--n", "3")
    assert "--n sets N for --losses generic only" in err and "N=4" in err


def test_derive_honours_n_with_generic_losses(capsys):
    code, out, _ = sdesam(capsys, "derive", "usam", "--losses", "generic", "--n", "5",
                          "--batch", "2", "--sampling", "without-replacement")
    assert code == 0
    # c(B) = (N - B) / (B (N - 1)) at N = 5, B = 2; the symbol N would leave it symbolic
    assert "c(B) = 3/8: True" in out and "N" not in out.split("c(B) =")[-1]


def test_derive_out_must_be_a_folder(capsys, tmp_path):
    taken = tmp_path / "file"
    taken.write_text("")
    err = refused(capsys, "derive", "usam", "--out", str(taken))
    assert "--out" in err and "not a folder" in err


def test_plot_of_a_folder_says_it_is_a_folder(capsys, tmp_path):
    (tmp_path / "sgn_trace.json").write_text("{}")
    err = refused(capsys, "plot", str(tmp_path))
    assert f"data file {str(tmp_path)!r} is a folder; expected a data file (.json)" in err
    assert "sgn_trace.json" in err and "does not exist" not in err


def test_an_experiment_takes_a_negative_number_as_a_value(capsys):
    """``sdesam run NAME`` hands the flags to a parser built from OneLineParser: a negative
    number reaches the experiment's own check instead of "expected one argument"."""
    err = refused(capsys, "run", "sde_vs_discrete", "--chains", "-5")
    assert err == "sdesam run sde_vs_discrete: error: --chains must be a positive integer; got -5\n"


@pytest.mark.parametrize("argv", [
    ("run", "escape_speed", "--quick"), ("run", "sde_vs_discrete", "--quick"),
    ("run", "sgn_trace", "--quick"), ("train", "--dataset", "synthetic", "--model", "small")])
def test_a_negative_seed_is_refused_by_name_before_any_work(capsys, tmp_path, argv):
    """One rule for seeds (``validation.seed``) in every command: escape_speed used to start
    its tasks and fail inside one with numpy's "expected non-negative integer"; sde_vs_discrete
    and train used to run with it."""
    out = tmp_path / "run"
    err = refused(capsys, *argv, "--seed", "-1", "--out", str(out))
    assert "seed must be an integer in [0, 2**64) (a seed); got -1" in err, err
    assert not out.exists()
