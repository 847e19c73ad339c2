"""experiments/benchmarks/bench_sde.py measures all three parts in one run and writes its table."""

from __future__ import annotations


import pytest

from sdesam.validation import InputError
from script_module import load_script


def load_bench():
    return load_script("experiments/benchmarks/bench_sde.py")


@pytest.mark.slow
def test_tiny_run_reports_every_ratio_and_both_peaks(tmp_path):
    bench = load_bench()
    assert bench.main(["--steps", "1", "--repeats", "1", "--sizes", "2x100",
                       "--memory-size", "200x5", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench_sde.txt").read_text()
    assert "best wall time of 1 calls" in text
    ensemble_row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["2", "100"])
    assert len(ensemble_row) == 8 and all(float(v) > 0 for v in ensemble_row[2:])
    chunk_rows = [line.split() for line in text.splitlines() if line.split()[:2] in (["8", "2"], ["64", "20"])]
    assert len(chunk_rows) == 2
    peaks = {row[0]: float(row[3]) for row in (line.split() for line in text.splitlines())
             if row[:1] in (["old"], ["new"]) and row[1:3] == ["200", "5"]}
    assert set(peaks) == {"old", "new"} and all(peak > 10 for peak in peaks.values())
    assert "old/new peak RSS at 200 x 5" in text


def test_bad_settings_are_refused_before_work(tmp_path):
    with pytest.raises(InputError, match="--repeats"):
        load_bench().main(["--repeats", "0", "--out", str(tmp_path)])
