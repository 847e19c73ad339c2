"""One command-line policy: choices come from the rule registry, and every command answers a
bad argument with one line naming it and exit status 2, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdesam import algorithms, layers
from sdesam.cli import build_parser, experiment_names
from sdesam.optim import optimizer_names

ROOT = Path(__file__).resolve().parents[1]


def choices_of(command: str, dest: str) -> tuple[str, ...]:
    """The choices argparse offers for ``dest`` of ``sdesam COMMAND``."""
    parser = build_parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if a.dest == dest).choices)


def test_rule_choices_are_read_from_the_registry():
    assert choices_of("derive", "algorithm") == layers.rules_for("symbolic")
    assert choices_of("train", "optimizer") == optimizer_names() == layers.rules_for("optimizer") \
        == algorithms.rule_names(lambda r: layers.support("optimizer", r) is None)


def test_a_registered_rule_becomes_a_choice():
    rule = algorithms.Rule("cli-test-usam", "part", False, False, "test rule")
    with algorithms.registered(rule):
        assert "cli-test-usam" in choices_of("derive", "algorithm")
        assert "cli-test-usam" in choices_of("train", "optimizer")
    assert "cli-test-usam" not in choices_of("derive", "algorithm")


BAD = [
    (["derive", "no-such-rule"], "RULE"),
    (["derive", "m-usam", "--batch", "3", "--micro", "2"], "micro"),
    (["derive", "sam", "--lam", "2"], "lam"),
    (["train", "--rule", "no-such-rule", "--out", "OUT"], "--rule"),
    (["train", "--rule", "m-sam", "--out", "OUT"], "micro"),
    (["train", "--label-noise", "1.5", "--out", "OUT"], "label"),
    (["plot", "MISSING.json"], "MISSING.json"),
    (["run", "no-such-experiment"], "experiment"),
]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_naming_it_and_status_2(argv, named, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / a) if a.endswith(".json") else a
            for a in argv]
    done = subprocess.run([sys.executable, "-m", "sdesam.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert named in done.stderr
    assert not (tmp_path / "out").exists()          # refused before any work


def test_every_experiment_script_is_a_run_subcommand():
    scripts = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
    assert experiment_names() == tuple(scripts)
