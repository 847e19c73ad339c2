"""``sdesam run NAME``: every script of experiments/ is reachable through the command line --
its ``--help`` in the default run, a quick run of each in the slow run.

The experiments' own tests load the scripts with tests/script_module.py; these go through
:func:`sdesam.cli.load_experiment`, the path a user takes (it once ran scripts unregistered in
``sys.modules``, which crashed the dataclasses of ``generalization``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sdesam.cli import experiment_names, main
from sdesam.experiment.records import read_record

QUICK_FLAGS: dict[str, list[str]] = {
    "escape_speed": ["--quick", "--no-progress", "--cache", "CACHE"],
    "generalization": ["--quick", "--no-progress", "--runs-dir", "RUNS"],
    "rwsam_mechanism": ["--quick", "--no-progress", "--cache", "CACHE"],
    "sde_corrections": ["--quick", "--no-progress"],
    "sde_vs_discrete": ["--quick", "--no-progress"],
    "sgn_trace": ["--quick", "--no-progress", "--cache", "CACHE"],
    "weak_error_exact": ["--quick"],
    # no --quick: the smallest grid of its own flags (one rule, one seed, one epoch)
    "train_table": ["--dataset", "synthetic", "--models", "small", "--rules", "sgd", "--seeds",
                    "0", "--epochs", "1", "--batch", "32", "--synthetic-train", "64",
                    "--synthetic-test", "32"],
}
"""The flags of each experiment's quick run (placeholders CACHE, RUNS: folders in tmp)."""

RECORD = {"train_table": "synthetic-table.json"}
"""The data file a quick run writes into --out, where it is not ``NAME.json``."""


def test_every_experiment_has_a_quick_run_here():
    assert set(experiment_names()) <= set(QUICK_FLAGS)


@pytest.mark.parametrize("name", experiment_names())
def test_run_name_help_exits_0_and_names_the_command(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sdesam run {name} ") and "--help" in out


def test_run_refuses_a_bad_flag_in_one_line_naming_the_experiment(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "sde_vs_discrete", "--chains", "many"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sdesam run sde_vs_discrete: error:") and "--chains" in err
    assert err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", experiment_names())
def test_quick_run_through_the_cli(name, tmp_path):
    places = {"CACHE": str(tmp_path / "cache"), "RUNS": str(tmp_path / "trainer-runs")}
    flags = [places.get(flag, flag) for flag in QUICK_FLAGS[name]]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "sdesam", "run", name, *flags, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    record = read_record(out / RECORD.get(name, f"{name}.json"))
    assert record["metadata"] and record["results"]
    assert not (tmp_path / "runs").exists()             # nothing beside what the flags named
