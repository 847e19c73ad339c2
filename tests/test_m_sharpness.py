"""experiments/m_sharpness.py end to end: the JSON shape, the cost axis and a redraw."""

import importlib.util
import json
from pathlib import Path

import pytest

from sdesam import plotting

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("m_sharpness_script",
                                                  ROOT / "experiments" / "m_sharpness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_shape(data, micros):
    assert data["settings"]["experiment"] == "m_sharpness"
    points = data["points"]
    assert sorted(p["micro"] for p in points if p["algorithm"] == "m-sam") == micros
    assert {p["algorithm"] for p in points} == {"sgd", "m-sam", "sam", "rw-sam"}
    for p in points:
        assert 0 <= p["test_accuracy_mean"] <= 1 and p["trace_V_mean"] > 0
        assert p["hessian_top_mean"] > 0 and p["relative_cost"] > 0
        assert len(p["per_seed"]["test_accuracy"]) == p["seeds"]
    assert next(p for p in points if p["algorithm"] == "sam")["relative_cost"] == pytest.approx(1.0)


def test_tiny_run_and_redraw(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "SETTINGS", {**script.SETTINGS, "steps": 10, "seeds": 2,
                                             "micros": [1, 5], "gd_steps": 30,
                                             "lanczos_iterations": 5})
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "m_sharpness.json").read_text())
    check_shape(data, [1, 5])
    assert plotting.redraw(tmp_path / "m_sharpness.json", tmp_path / "r")[0].is_file()


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    check_shape(json.loads((tmp_path / "m_sharpness.json").read_text()), [1, 5])
