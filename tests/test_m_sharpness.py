"""experiments/m_sharpness.py end to end: the record schema, the cost axis, pairs and a redraw."""

import importlib.util
from pathlib import Path

import pytest

from sdesam import plotting
from sdesam.experiment.records import read_record

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("m_sharpness_script",
                                                  ROOT / "experiments" / "m_sharpness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_shape(data, micros):
    settings, results = data["settings"], data["results"]
    assert settings["experiment"] == "m_sharpness" and "lam" not in settings
    assert "cache_dir" not in settings and "wall_time_s" in data["metadata"]
    points = results["points"]
    assert sorted(p["micro"] for p in points if p["rule"] == "m-sam") == micros
    assert {p["rule"] for p in points} == {"sgd", "m-sam", "sam", "rw-sam"}
    assert all(p["micro"] is None for p in points if p["rule"] != "m-sam")
    for p in points:
        assert 0 <= p["test_accuracy"] <= 1 and p["trace_V"] > 0
        assert p["hessian_top"] > 0 and p["relative_cost"] > 0
        assert p["chains"] == settings["seeds"] and p["diverged"] == 0
    assert next(p for p in points if p["rule"] == "sam")["relative_cost"] == pytest.approx(1.0)
    assert len(results["per_seed"]) == len(points) * settings["seeds"]


def test_tiny_run_and_redraw(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, "steps": 5, "seeds": 2,
                                             "micros": [1, 5], "gd_steps": 10,
                                             "lanczos_iterations": 3})
    assert script.main(["--out", str(tmp_path), "--no-progress",
                        "--cache", str(tmp_path / "cache")]) == 0
    data = read_record(tmp_path / "m_sharpness.json")
    check_shape(data, [1, 5])
    results = data["results"]
    per_seed = {(r["rule"], r["micro"], r["seed"]): r for r in results["per_seed"]}
    paired = {(r["rule"], r["micro"], r["baseline"], r["quantity"]): r for r in results["paired"]}
    row = paired[("m-sam", 1, "sam", "trace_V")]
    assert row["differences"] == pytest.approx(
        [per_seed[("m-sam", 1, s)]["trace_V"] - per_seed[("sam", None, s)]["trace_V"] for s in (0, 1)])
    assert len(paired) == 3 * 2 * 4                     # quantities x baselines x other rules
    assert plotting.redraw(tmp_path / "m_sharpness.json", tmp_path / "r")[0].is_file()


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress",
                               "--cache", str(tmp_path / "cache")]) == 0
    check_shape(read_record(tmp_path / "m_sharpness.json"), [1, 5])
