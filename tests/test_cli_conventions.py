"""What a user expects of the command and the package (issue 16): ``python -m sdesam``,
``--version`` from one place, the rules in ``derive --help``, a readable ``derive`` summary
with the full result on request, and the LICENSE, ``py.typed`` and CHANGELOG."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sdesam
from sdesam import algorithms, layers
from sdesam.cli import main
from sdesam.symbolic import derive, example_losses, listing

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_main(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit status and stdout of ``sdesam ARGV`` in this process."""
    try:
        code = main(list(argv))
    except SystemExit as done:
        code = done.code
    return code, capsys.readouterr().out


def test_version_lives_in_one_place():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sdesam.__version__"}
    assert importlib.metadata.version("sdesam") == sdesam.__version__


def test_version_flag(capsys):
    assert run_main(capsys, "--version") == (0, f"sdesam {sdesam.__version__}\n")


def test_python_dash_m_sdesam_is_the_command():
    done = subprocess.run([sys.executable, "-m", "sdesam", "--version"], capture_output=True,
                          text=True)
    assert (done.returncode, done.stdout) == (0, f"sdesam {sdesam.__version__}\n")
    done = subprocess.run([sys.executable, "-m", "sdesam"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("sdesam: error:")
    assert done.stderr.count("\n") == 1


def test_derive_help_lists_the_rules_of_the_registry(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")          # no wrapping (argparse breaks at hyphens)
    code, out = run_main(capsys, "derive", "--help")
    assert code == 0
    assert "one of: " + ", ".join(layers.rules_for("symbolic")) in out
    rule = algorithms.Rule("help-test-usam", "part", False, False, "test rule")
    with algorithms.registered(rule):
        assert "help-test-usam" in run_main(capsys, "derive", "--help")[1]


def test_derive_rw_sam_prints_a_readable_summary(capsys):
    code, out = run_main(capsys, "derive", "rw-sam", "--lam", "2", "--no-progress")
    assert code == 0
    assert len(out) < 4000, len(out)                  # the full drift is over 100 000 characters
    assert "[x] -x**3/3 - 41*x/16 + 5*y/8 + 1/2 + O(rho) terms (" in out
    assert "drift equals the first-order form: True" in out and "--out DIR" in out


def test_derive_out_writes_the_full_result(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "SUMMARY_WIDTH", 60)       # summarise even the short example
    argv = ["usam", "--losses", "example-1d", "--batch", "2"]
    code, out = run_main(capsys, "derive", *argv, "--out", str(tmp_path / "full"), "--no-progress")
    assert code == 0 and "O(rho) terms" in out
    losses, variables = example_losses(1)
    d = derive("usam", losses, variables, batch=2)
    text = (tmp_path / "full" / "usam.txt").read_text()
    assert f"  [x] {d.drift[0]}\n" in text and "O(rho) terms" not in text
    assert "drift equals the closed form: True" in text
    assert (tmp_path / "full" / "usam.tex").read_text() == d.latex() + "\n"
    assert f"wrote {tmp_path / 'full' / 'usam.txt'}" in out


def test_license_matches_pyproject():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "the sdesam developers" in text


def test_py_typed_is_shipped():
    assert (ROOT / "sdesam" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["sdesam"]


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in text and "\n## [Unreleased]\n" in text
