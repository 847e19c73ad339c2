"""experiments/generalization.py end to end on a tiny design (the record, equal tuning budgets,
pairing, seeds with their own data, pruning at chance, reuse) and the shape of the committed
``figures/generalization.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sdesam import plotting
from sdesam.experiment import tuning
from sdesam.experiment.records import read_record
from sdesam.validation import InputError
import script_module

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    return script_module.load_script("experiments/generalization.py", "generalization_script")


TINY = {"cells": [{"dataset": "digits", "label_noise": 0.4, "norm": "none"}], "micros": [4],
        "rho_grid": [0.05, 0.1], "weight_decay_grid": [2.5e-4, 5e-4], "lam_multiples": [2.0],
        "max_extensions": 1, "tune_seeds": [1000, 1001], "seeds": 2, "lanczos_iterations": 3,
        "statistics_samples": 64, "dataset_setup": {"digits": {"model": "mlp1d", "lr": 0.05, "epochs": 2}}}


def test_tiny_design_tunes_every_method_alike_and_writes_a_paired_record(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, **TINY})
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    data = read_record(tmp_path / "generalization.json")
    results = data["results"]
    assert data["metadata"]["complete"] and data["settings"]["seeds"] == 2
    labels = {(r["rule"], r["micro"]) for r in results["summary"]}
    assert labels == {("sgd", None), ("sam", None), ("m-sam", 4), ("rw-sam", None)}
    # the same budget for every method, SGD included (its weight decay); extensions recorded
    for choice in results["choices"]:
        stages = {stage: choice[f"{stage}_candidates"] for stage in ("grid", "extension", "refinement")}
        assert stages["grid"] == 2 and stages["refinement"] in (1, 2)
        assert stages["extension"] == len(choice["extended_to"]) <= 1
        assert choice["candidates"] == sum(stages.values())
        assert choice["tuned"] == ("weight_decay" if choice["rule"] == "sgd" else "rho")
        assert choice["selected_on"] == "noisy" and choice["other_validation_value"] is not None
        tried = [r for r in results["tuning"] if (r["rule"], r["micro"]) == (choice["rule"], choice["micro"])]
        assert len(tried) == choice["candidates"]
        best = max((r for r in tried if r["score"] is not None), key=lambda r: r["score"])
        assert choice["score"] == best["score"]
    sam_like = [c for c in results["choices"] if c["rule"] in ("sgd", "sam", "m-sam")]
    assert all(c["refinement_candidates"] == 2 for c in sam_like)
    rw = [r for r in results["tuning"] if r["rule"] == "rw-sam" and r["stage"] == "refinement"]
    assert [r["lam_multiple"] for r in rw] == [2.0]          # lam's alternative at the chosen rho
    runs = results["runs"]
    assert len(runs) == 4 * 2  # methods x seeds, the same seeds for every method
    assert {r["seed"] for r in runs} == {0, 1}
    for row in runs:
        assert row["data_seed"] == row["seed"]              # its own split and noise draw
        assert 0 <= row["test_acc"] <= 100 and row["trace_V"] > 0 and row["hessian_top"] > 0
        if row["rule"] == "rw-sam":  # lam recalibrated per run from its own init
            assert row["lam"] == pytest.approx(row["lam_multiple"] / row["mean_grad_norm"])
    # noisy validation labels by default: the two validation accuracies differ
    assert any(r["val_acc"] != r["val_clean_acc"] for r in runs)
    configs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("runs/*/sgd-*-seed[01]/config.json"))]
    assert len(configs) == 2 and configs[0]["data"]["flipped_indices"] != configs[1]["data"]["flipped_indices"]
    assert all(c["settings"]["noisy_validation"] for c in configs)
    paired = results["paired"]
    assert {r["reference"] for r in paired} == {"sgd", "sam"}
    for row in paired:
        assert row["ci_low"] <= row["difference_mean"] <= row["ci_high"] and row["seeds"] == 2
        assert row["minimal_detectable_difference"] >= 0
        assert row["verdict"] in ("supported", "not supported", "not resolvable")
    table = (tmp_path / "generalization.md").read_text()
    assert "SAM beats SGD" in table and "m-SAM m=4 beats SAM" in table
    # a second start finds every run finished and trains nothing
    before = {p: p.stat().st_mtime for p in tmp_path.glob("runs/*/*/checkpoint.pt")}
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime for p in tmp_path.glob("runs/*/*/checkpoint.pt")} == before
    assert read_record(tmp_path / "generalization.json")["results"]["runs"] == runs
    written = plotting.redraw(tmp_path / "generalization.json", tmp_path / "redrawn")
    assert all(p.stat().st_size > 0 for p in written)


def test_only_a_tuning_candidate_at_chance_is_stopped(tmp_path):
    script = load_script()
    runner = script.Runner({**script.SETTINGS, "prune_below": 15.0}, tmp_path, "cpu")
    check = runner._pruner(9, final=False)
    check({"epoch": 2, "val_acc": 5.0})     # not the checkpoint epoch
    check({"epoch": 3, "val_acc": 16.0})    # above chance: kept, however far behind the best
    with pytest.raises(script._Pruned, match="3"):
        check({"epoch": 3, "val_acc": 11.0})
    runner._pruner(9, final=True)({"epoch": 3, "val_acc": 0.0})   # evaluation runs never stop


@pytest.mark.parametrize("change, message", [
    ({"rho_grid": [0.01, 0.03, 0.1]}, "rho_grid must ascend in steps of at most 2x"),
    ({"weight_decay_grid": []}, "weight_decay_grid must be a non-empty list"),
    ({"tune_seeds": [1000]}, "tune_seeds and seeds must each number at least 2"),
    ({"tune_seeds": [0, 1000]}, "tune_seeds must differ from the evaluation seeds"),
    ({"cells": [{"dataset": "digits", "label_noise": 0.0, "norm": "gn"}]}, "norm must be 'none' or 'bn'"),
])
def test_a_design_that_breaks_the_protocol_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                      change, message):
    script = load_script()
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, **TINY, **change})
    with pytest.raises(InputError, match=message):
        script.main(["--out", str(tmp_path / "out"), "--no-progress"])
    assert not (tmp_path / "out").exists()


def test_the_default_design_follows_the_protocol():
    script = load_script()
    settings = script.SETTINGS
    rho = tuning.check_grid("rho_grid", settings["rho_grid"], low=0.005, high=0.5)
    tuning.check_grid("weight_decay_grid", settings["weight_decay_grid"])
    assert len(rho) == len(settings["weight_decay_grid"])      # the same budget, SGD included
    assert settings["seeds"] >= 12 and len(settings["tune_seeds"]) == 2
    assert settings["validation"] == "noisy"
    cells = {(c["dataset"], c["label_noise"], c["norm"]) for c in settings["cells"]}
    assert {("mnist1d", 0.0, "none"), ("mnist1d", 0.2, "none"), ("mnist1d", 0.0, "bn"),
            ("digits", 0.0, "none")} <= cells
    assert settings["dataset_setup"]["mnist1d"]["epochs"] >= 30
    methods = [m.label for m in script.methods(settings)]
    assert methods == ["sgd", "sam", "m-sam(m=1)", "m-sam(m=4)", "rw-sam"]


def test_the_committed_run_has_the_protocol_shape():
    data = read_record(ROOT / "figures" / "generalization.json")
    settings, results = data["settings"], data["results"]
    assert data["metadata"]["complete"] and not settings["quick"]
    tuning.check_grid("rho_grid", settings["rho_grid"], low=0.005, high=0.5)
    assert settings["seeds"] >= 12 and len(settings["tune_seeds"]) >= 2
    for key in ("cells", "dataset_setup", "weight_decay_grid", "lam_multiples", "validation"):
        assert key in settings
    cells = {(c["dataset"], c["label_noise"], c["norm"]) for c in settings["cells"]}
    assert ("mnist1d", 0.0, "bn") in cells
    assert settings["dataset_setup"]["mnist1d"]["epochs"] >= 30
    by_cell: dict[tuple, list[dict]] = {}
    for choice in results["choices"]:
        by_cell.setdefault((choice["dataset"], choice["label_noise"], choice["norm"]), []).append(choice)
    assert set(by_cell) == cells
    for choices in by_cell.values():
        assert len(choices) == 5
        budgets = {c["grid_candidates"] + c["refinement_candidates"] for c in choices}
        assert budgets == {len(settings["rho_grid"]) + 2}       # equal, before any extension
    runs = results["runs"]
    assert len(runs) == 5 * settings["seeds"] * len(cells)
    assert all(r["data_seed"] == r["seed"] for r in runs)
    for row in results["paired"]:
        assert row["verdict"] in ("supported", "not supported", "not resolvable")
        assert math.isfinite(row["difference_mean"])
    sgd = [r for r in results["summary"]
           if (r["dataset"], r["label_noise"], r["norm"], r["rule"]) == ("mnist1d", 0.0, "none", "sgd")]
    assert sgd and sgd[0]["test_acc_mean"] >= 94.0              # trained to its published accuracy
