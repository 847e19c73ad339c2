"""experiments/train_table.py: the grid runs, resumes and its table matches the metric files."""

from __future__ import annotations

import json
import statistics

import pytest

from sdesam.cli import guarded
from sdesam.experiment.records import read_record
from script_module import load_script


def _load():
    return load_script("experiments/train_table.py")


def test_grid_writes_mean_and_std_of_the_final_accuracies(tmp_path, capsys):
    table = _load()
    argv = ["--dataset", "synthetic", "--models", "small", "--rules", "sgd", "rw-sam",
            "--seeds", "0", "1", "--epochs", "1", "--batch", "32", "--synthetic-train", "64",
            "--synthetic-test", "32", "--out", str(tmp_path)]
    assert table.main(argv) == 0
    written = read_record(tmp_path / "synthetic-table.json")
    assert written["settings"]["batch"] == 32 and written["metadata"]["cpu_time_s"] > 0
    cells = {row["rule"]: row for row in written["results"]["table"]}
    for rule in ("sgd", "rw-sam"):
        finals = [json.loads((tmp_path / "synthetic" / "small" / rule / f"seed{s}" /
                              "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
                  for s in (0, 1)]
        cell = cells[rule]
        assert cell["values"] == finals and cell["seeds"] == 2 and cell["micro"] is None
        assert cell["test_accuracy"] == pytest.approx(sum(finals) / 2)
        assert cell["test_accuracy_std"] == pytest.approx(statistics.stdev(finals))
    text = (tmp_path / "synthetic-table.md").read_text()
    assert "| small |" in text and "(n=2)" in text
    # finished runs are not trained again: their files stay untouched
    marker = tmp_path / "synthetic" / "small" / "sgd" / "seed0" / "checkpoint.pt"
    before = marker.stat().st_mtime_ns
    assert table.main(argv) == 0
    assert marker.stat().st_mtime_ns == before


def test_paper_numbers_sit_beside_ours():
    table = _load()
    text = table.markdown("cifar10", {"resnet18": {"sgd": None, "rw-sam": table.summarize([96.0, 96.5])}},
                          ["sgd", "rw-sam"])
    assert "95.62 ± 0.03" in text and "96.24 ± 0.05" in text and "96.25 ± 0.35 (n=2)" in text


def test_bad_grid_settings_are_one_line_and_status_2(tmp_path, capsys):
    table = _load()
    argv = ["--dataset", "cifar10", "--models", "small", "--out", str(tmp_path)]
    assert guarded("train_table", lambda: table.main(argv)) == 2
    err = capsys.readouterr().err
    assert "data_dir is required" in err and err.count("\n") == 1
    assert guarded("train_table", lambda: table.main(["--table-only"])) == 2
    assert "--table-only needs --out" in capsys.readouterr().err
