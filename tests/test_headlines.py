"""Every experiment ends by printing its headline numbers, not only the paths it wrote.

The experiments with their own tiny-run tests (escape_speed, sgn_trace, sde_vs_discrete) check
their headline there with :func:`headline_numbers`; the others are run here on the tiny
settings of their tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdesam.experiment.headline import estimate, interval, print_headline, rule_name
from sdesam.experiment.records import write_json
from script_module import load_script

NUMBER = re.compile(r"(?<![\w/.-])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w/])")


def headline_numbers(stdout: str, experiment: str) -> list[list[float]]:
    """The numbers of each line of ``experiment``'s headline in ``stdout`` (asserting there is
    a headline with at least one line, and a number on every line)."""
    lines = stdout.splitlines()
    assert f"{experiment} headline:" in lines, f"no headline in:\n{stdout}"
    rows = []
    for line in lines[lines.index(f"{experiment} headline:") + 1:]:
        if not line.startswith("  "):
            break
        value = line.strip().split("  ", 1)[-1]          # the value column, after the label
        numbers = [float(n) for n in NUMBER.findall(value)]
        assert numbers, f"headline line without a number: {line!r}"
        rows.append(numbers)
    assert rows, f"empty headline in:\n{stdout}"
    return rows


def write_json_only(data, out):
    """``publish`` without the drawing."""
    return [write_json(Path(out) / f"{data['settings']['experiment']}.json", data)]


def test_the_headline_format(capsys):
    print_headline("demo", [("sgd", estimate(0.012346, 0.00067)),
                            ("m-sam m=1", interval(2957.3, -0.25, 2.5e7))])
    assert capsys.readouterr().out.splitlines() == ["demo headline:",
                                                     "  sgd        0.01235 ± 0.00067",
                                                     "  m-sam m=1  2957 [-0.250, 2.5e+07]"]
    assert rule_name({"rule": "rw-sam", "micro": None, "lam": 4.0}) == "rw-sam lam=4"
    assert estimate(None) == "-"


def test_sde_corrections_prints_its_weak_errors(tmp_path, monkeypatch, capsys):
    script = load_script("experiments/sde_corrections.py", "sde_corrections_headline")
    monkeypatch.setattr(script, "QUICK", {**script.QUICK, "runs": [["usam", None]],
                                          "cost_dims": [2], "cost_chains": 100})
    assert script.main(["--quick", "--chains", "40", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = headline_numbers(capsys.readouterr().out, "sde_corrections")
    assert len(rows) == len(script.VARIANTS) + 1        # one per variant, one sqrt cost
    assert all(row[0] >= 0 for row in rows[:-1])       # the weak error, then its error and the shift


def test_rwsam_mechanism_prints_the_pushes(tmp_path, monkeypatch, capsys):
    script = load_script("experiments/rwsam_mechanism.py", "rwsam_mechanism_headline")
    monkeypatch.setattr(script, "LANDSCAPE_QUICK", {"batches": 100, "offsets": [0.0]})
    monkeypatch.setattr(script, "LAMS_QUICK", [0.0, 4.0])
    monkeypatch.setattr(script, "publish", write_json_only)
    assert script.main(["--quick", "--problems", "landscape", "--out", str(tmp_path),
                        "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = headline_numbers(out, "rwsam_mechanism")
    assert len(rows) == 2 + 2                           # SAM, m-SAM m=1, RW-SAM at two lam
    assert "rw-sam lam=4/mean|g_i|" in out


def test_generalization_prints_the_accuracies(tmp_path, monkeypatch, capsys):
    from test_generalization import TINY
    script = load_script("experiments/generalization.py", "generalization_headline")
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, **TINY, "rho_grid": [0.05],
                                             "weight_decay_grid": [5e-4], "lam_multiples": [],
                                             "max_extensions": 0})
    monkeypatch.setattr(script, "publish", write_json_only)
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    rows = headline_numbers(capsys.readouterr().out, "generalization")
    assert len(rows) == len(script.methods({**script.SETTINGS, **TINY}))
    assert all(0 <= row[1] <= 100 for row in rows)      # noise %, then the accuracy


def test_train_table_prints_the_accuracies(tmp_path, capsys):
    script = load_script("experiments/train_table.py", "train_table_headline")
    assert script.main(["--dataset", "synthetic", "--models", "small", "--rules", "sgd",
                        "--seeds", "0", "--epochs", "1", "--batch", "32", "--synthetic-train", "64",
                        "--synthetic-test", "32", "--out", str(tmp_path)]) == 0
    rows = headline_numbers(capsys.readouterr().out, "train_table")
    assert len(rows) == 1 and 0 <= rows[0][0] <= 100
