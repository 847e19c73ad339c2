"""experiments/benchmarks/bench_train.py runs every contender and reports ratios to SAM."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "bench_train.py"


def test_benchmark_table_lists_every_rule_and_the_ratios(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.txt"
    assert bench.main(["--model", "small", "--batch-size", "8", "--micro", "4", "--rounds", "1",
                       "--steps", "1", "--warmup", "1", "--loader-workers", "0", "--device", "cpu",
                       "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("sgd ", "sam ", "m-sam m=4", "rw-sam", "straightforward loop"):
        assert row in text
    assert "RW-SAM / SAM time per step: wall" in text and "m-SAM (m=4) / SAM" in text
    sam_row = next(line for line in text.splitlines() if line.startswith("sam "))
    assert sam_row.split()[3] == "1.000" and sam_row.split()[-1] == "1.000"  # its own ratios
