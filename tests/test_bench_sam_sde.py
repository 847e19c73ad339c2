"""experiments/benchmarks/bench_sam_sde.py measures old and new estimators side by side and
writes its table; its old estimator is the one the library had."""

from __future__ import annotations

import pytest
import torch

from sdesam.problems import TeacherStudent
from sdesam.simulation import sde
from sdesam.validation import InputError
from script_module import load_script


def load_bench():
    return load_script("experiments/benchmarks/bench_sam_sde.py")


def test_quick_run_writes_a_row_per_rule_and_size(tmp_path):
    bench = load_bench()
    assert bench.main(["--quick", "--chains", "4", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench_sam_sde.txt").read_text()
    rows = [line.split() for line in text.splitlines() if line.split()[-2:-1] == ["<="]]
    assert len(rows) == 6
    assert {row[-6] for row in rows} == {"drawn"} and {row[-9] for row in rows} == {"fixed", "330"}
    assert all(float(row[-5]) > 0 and float(row[-8]) > 0 for row in rows)


def test_enumeration_table_has_both_routes_at_every_size(tmp_path):
    bench = load_bench()
    assert bench.main(["--quick", "--chains", "4", "--enumeration", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench_sam_sde.txt").read_text()
    rows = [line.split() for line in text.splitlines()
            if line.split()[:1] in (["sam"], ["rw-sam"])]
    assert [(row[0], int(row[4])) for row in rows] == [
        (rule, count) for count in (36, 64, 120, 330) for rule in ("sam", "rw-sam")]
    assert all(len(row) == 9 and all(float(v) > 0 for v in row[5:]) for row in rows)


@pytest.mark.parametrize("problem", [
    TeacherStudent(n=5, inputs=1, hidden=2, noise=0.3, seed=1),
    load_bench().least_squares(5, 4)], ids=["network", "least-squares-feature-route"])
def test_the_old_estimator_equals_the_exact_drift_where_it_enumerated(problem):
    """Where the old code enumerated every batch, its drift is the new exact one's (RW-SAM's
    Gibbs weights by the old softmax over all N, the new one over each batch's members; on
    least squares the new one takes the feature route, the old the per-sample one)."""
    bench = load_bench()
    x = torch.randn(3, problem.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for rule, options in (("sam", {}), ("rw-sam", {"lam": 2.0}), ("rw-sam-wr", {"lam": 2.0})):
        common = dict(eta=0.1, rho=0.2, batch=3, **options)
        old = bench.OldSetsSDE(problem, rule, **common)
        assert old.sets_exact and old.set_count == 35
        new = sde.AlgorithmSDE(problem, rule, **common)
        torch.testing.assert_close(old.f(0.0, x), new.f(0.0, x), rtol=0, atol=1e-13)


@pytest.mark.parametrize("argv, match", [(["--steps", "0"], "--steps"),
                                         (["--chains", "-1"], "--chains")])
def test_bad_settings_are_refused_before_work(tmp_path, argv, match):
    with pytest.raises(InputError, match=match):
        load_bench().main([*argv, "--out", str(tmp_path)])
