"""experiments/benchmarks/bench_train.py runs every contender and reports the ratios of issue 12."""

from __future__ import annotations

from script_module import load_script


def load_bench():
    return load_script("experiments/benchmarks/bench_train.py")


def test_benchmark_table_lists_every_rule_and_the_ratios(tmp_path):
    bench = load_bench()
    assert bench.main(["--models", "small", "--batch-size", "4", "--micro", "2", "1", "--rounds",
                       "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                       "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench_train.txt").read_text()
    for row in ("sgd ", "sam ", "m-sam m=2 ", "m-sam m=1, sequential loop", "rw-sam",
                "straightforward loop"):
        assert row in text
    assert "RW-SAM / SAM time per step: paired CPU-time ratio" in text and "m-SAM (m=2) / SAM" in text
    assert "m-SAM (m=1) vmapped / sequential loop: paired CPU-time ratio" in text
    assert "(target <= 0.8: needs >= 6 rounds)" in text  # two rounds: no interval claimed
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


def test_ratio_verdict_needs_the_whole_interval_below_the_target():
    bench = load_bench()

    def pair(ratios):
        top = bench.Contender("a", lambda: None, times=list(ratios), cpu_times=list(ratios))
        bottom = bench.Contender("b", lambda: None, times=[1.0] * len(ratios),
                                 cpu_times=[1.0] * len(ratios))
        return top, bottom

    below = [0.90, 0.92, 0.93, 0.95, 0.96, 0.97, 0.98]
    assert bench.ratio_line("x", *pair(below), 1.0).endswith(": met)")
    assert bench.ratio_line("x", *pair([r + 0.2 for r in below]), 1.0).endswith(": not met)")
    across = [0.90, 0.95, 0.98, 1.0, 1.02, 1.04, 1.08]
    line = bench.ratio_line("x", *pair(across), 1.0)
    assert "paired CPU-time ratio 1.000 [95% CI 0.900, 1.080]" in line
    assert line.endswith("not resolvable at this noise)")
