"""experiments/benchmarks/bench_sde.py measures all its parts in one run and writes its table."""

from __future__ import annotations


import pytest
import torch

from sdesam.validation import InputError
from script_module import load_script


def load_bench():
    return load_script("experiments/benchmarks/bench_sde.py")


@pytest.mark.slow
def test_tiny_run_reports_every_ratio_and_both_peaks(tmp_path, capsys):
    bench = load_bench()
    assert bench.main(["--steps", "1", "--repeats", "1", "--sizes", "2x100",
                       "--memory-size", "200x5", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("expected: about") < printed.index("1. ensemble vs SDE")  # said up front
    text = (tmp_path / "bench_sde.txt").read_text()
    assert "best wall time of 1 calls" in text
    ensemble_row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["2", "100"])
    assert len(ensemble_row) == 8 and all(float(v) > 0 for v in ensemble_row[2:])
    sized = [line.split() for line in text.splitlines() if line.split()[:2] in (["8", "2"], ["64", "20"])]
    assert [len(row) for row in sized] == [5, 5, 8, 8, 9]    # part 2's rows, part 5's, part 7's
    assert all(float(v) > 0 for row in sized[2:4] for v in row[4:7])
    compiled = [row for row in sized if len(row) == 9] + [
        line.split() for line in text.splitlines() if line.split()[:2] == ["16", "4"]]
    assert len(compiled) == 2 and all(float(row[6].rstrip("x")) > 0 for row in compiled)
    peaks = {row[0]: float(row[3]) for row in (line.split() for line in text.splitlines())
             if row[:1] in (["old"], ["new"]) and row[1:3] == ["200", "5"]}
    assert set(peaks) == {"old", "new"} and all(peak > 10 for peak in peaks.values())
    assert "old/new peak RSS at 200 x 5" in text
    family = [line.split() for line in text.splitlines()
              if line.split()[:1] in (["SAM"], ["m-SAM"], ["RW-SAM"])]
    assert len(family) == 6                       # part 6: three rules at two sizes
    assert all(float(row[-5]) > 0 and float(row[-4]) > 0 and row[-2] == "<=" for row in family)


def test_bad_settings_are_refused_before_work(tmp_path):
    with pytest.raises(InputError, match="--repeats"):
        load_bench().main(["--repeats", "0", "--out", str(tmp_path)])


def fail(*args, **kwargs):
    raise AssertionError("a measurement started")


def test_an_old_comparison_too_big_for_the_machine_is_refused_up_front(tmp_path, monkeypatch):
    bench = load_bench()
    for measurement in ("ensemble_against_sde", "sde_chunking", "peak_rss_of"):
        monkeypatch.setattr(bench, measurement, fail)
    with pytest.raises(InputError, match=r"^--memory-size=1000000x1000: .* bytes.*available"):
        bench.main(["--memory-size", "1000000x1000", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--memory-size must be AxB"):
        bench.main(["--memory-size", "lots", "--out", str(tmp_path / "out")])


def test_quick_sizes_are_smaller_and_the_help_says_how_long_a_run_takes(capsys, monkeypatch):
    monkeypatch.delenv("SDESAM_QUICK", raising=False)
    bench = load_bench()
    quick, full = bench.parse_args(["--quick"]), bench.parse_args([])
    assert quick.steps < full.steps and quick.repeats < full.repeats
    assert max(c for _, c in quick.sizes) < max(c for _, c in full.sizes)
    assert quick.memory_size[0] * quick.memory_size[1] < full.memory_size[0] * full.memory_size[1]
    assert bench.parse_args(["--quick", "--steps", "7"]).steps == 7          # flags still win
    monkeypatch.setenv("SDESAM_QUICK", "1")                                  # the README test's
    assert bench.parse_args([]).steps == quick.steps
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the default run takes about 2 minutes" in help_text and "``--quick`` about 30 s" in help_text


@pytest.mark.parametrize("n, dim, batch, micro", [(8, 3, 4, 2), (64, 20, 16, 4)])
def test_the_closed_form_reference_follows_the_fast_path(n, dim, batch, micro):
    """Part 5 times the same SDE both ways: same Brownian increments, same path to 1e-10."""
    bench = load_bench()
    problem = bench.least_squares(n, dim)
    model = bench.sde.AlgorithmSDE(problem, "m-usam", eta=bench.ETA, rho=bench.RHO, batch=batch,
                                   micro=micro)
    x0 = torch.randn(50, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bm = bench.FixedGridBrownian(bench.time_grid(20 * bench.ETA, bench.ETA), (50, n), 3)
    closed = bench.closed_form_run(problem, x0, bm, rho=bench.RHO, batch=batch, micro=micro)
    fast = bench.sde.euler_maruyama(model, x0, bm, every=None, keep_states=False).final
    assert (closed - x0).abs().max() > 1e-3          # the chains moved
    torch.testing.assert_close(fast, closed, rtol=0, atol=1e-10)
