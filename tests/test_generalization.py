"""experiments/generalization.py end to end on a tiny design: the record, pairing, pruning, reuse."""

from __future__ import annotations


import pytest

from sdesam import plotting
from sdesam.experiment.records import read_record
import script_module


def load_script():
    return script_module.load_script("experiments/generalization.py", "generalization_script")


TINY = {"datasets": ["digits"], "label_noise": [0.4], "micros": [4], "rho_grid": [0.05, 0.5],
        "lam_multiples": [1.0, 2.0], "seeds": 2, "lanczos_iterations": 3, "statistics_samples": 64,
        "dataset_setup": {"digits": {"model": "mlp1d", "lr": 0.05, "epochs": 2}}}


def test_tiny_design_writes_a_paired_record_and_reuses_finished_runs(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, **TINY})
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    data = read_record(tmp_path / "generalization.json")
    results = data["results"]
    assert data["metadata"]["complete"] and data["settings"]["seeds"] == 2
    assert "chosen_rho" not in data["settings"]  # computed things live in results
    labels = {(r["rule"], r["micro"]) for r in results["summary"]}
    assert labels == {("sgd", None), ("sam", None), ("m-sam", 4), ("rw-sam", None)}
    for choice in results["choices"]:
        if choice["rule"] == "sgd":
            assert choice["rho"] is None and choice["candidates"] == 0
        else:
            assert choice["rho"] in TINY["rho_grid"]
    rw = [c for c in results["choices"] if c["rule"] == "rw-sam"]
    assert all(c["lam_multiple"] in (1.0, 2.0) and c["candidates"] in (2, 3) for c in rw)
    runs = results["runs"]
    assert len(runs) == 4 * 2  # methods x seeds, the same seeds for every method
    assert {r["seed"] for r in runs if r["rule"] == "sgd"} == {r["seed"] for r in runs} == {0, 1}
    for row in runs:
        assert 0 <= row["test_acc"] <= 100 and row["trace_V"] > 0 and row["hessian_top"] > 0
        if row["rule"] == "rw-sam":  # lam recalibrated per run from its own init
            assert row["lam"] == pytest.approx(row["lam_multiple"] / row["mean_grad_norm"])
    paired = results["paired"]
    assert {r["reference"] for r in paired} == {"sgd", "sam"}
    for row in paired:
        assert row["ci_low"] <= row["difference_mean"] <= row["ci_high"] and row["seeds"] == 2
        assert row["minimal_detectable_difference"] >= 0
    # a second start finds every run finished and trains nothing
    before = {p: p.stat().st_mtime for p in tmp_path.glob("runs/*/*/checkpoint.pt")}
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime for p in tmp_path.glob("runs/*/*/checkpoint.pt")} == before
    assert read_record(tmp_path / "generalization.json")["results"]["runs"] == runs
    written = plotting.redraw(tmp_path / "generalization.json", tmp_path / "redrawn")
    assert all(p.stat().st_size > 0 for p in written)


def test_a_candidate_trailing_the_best_is_stopped_at_a_third_of_training(tmp_path):
    script = load_script()
    runner = script.Runner({**script.SETTINGS, "prune_margin": 3.0}, tmp_path, "cpu", False)
    check = runner._pruner(9, bar=[50.0] * 9)
    check({"epoch": 2, "val_acc": 10.0})  # not a checkpoint epoch
    check({"epoch": 3, "val_acc": 47.5})  # within the margin
    with pytest.raises(script._Pruned, match="6"):
        check({"epoch": 6, "val_acc": 46.0})
    runner._pruner(9, bar=None)({"epoch": 3, "val_acc": 0.0})  # nothing to compare with yet
