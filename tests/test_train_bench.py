"""experiments/benchmarks/bench_train.py runs every contender and reports the ratios of issue 12."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "bench_train.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_table_lists_every_rule_and_the_ratios(tmp_path):
    bench = load_bench()
    assert bench.main(["--models", "small", "--batch-size", "4", "--micro", "2", "1", "--rounds",
                       "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                       "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench_train.txt").read_text()
    for row in ("sgd ", "sam ", "m-sam m=2 ", "m-sam m=1, sequential loop", "rw-sam",
                "straightforward loop"):
        assert row in text
    assert "RW-SAM / SAM time per step: CPU time" in text and "m-SAM (m=2) / SAM" in text
    assert "m-SAM (m=1) vmapped / sequential loop" in text and "(target <= 0.8)" in text
    assert "vmap group" in text and "load average" in text and "nproc" in text
    sam_row = next(line for line in text.splitlines() if line.startswith("sam "))
    assert sam_row.split()[3] == "1.000" and sam_row.split()[5] == "1.000"  # its own ratios


def test_benchmark_writes_a_fresh_folder_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = load_bench()
    assert bench.main(["--models", "small", "--batch-size", "4", "--micro", "2", "--rounds", "1",
                       "--steps", "1", "--warmup", "0", "--no-baseline", "--device", "cpu"]) == 0
    written = list((tmp_path / "runs").glob("bench_train-*/bench_train.txt"))
    assert len(written) == 1
