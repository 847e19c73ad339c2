"""experiments/sgn_trace.py end to end: the documented JSON shape and a redraw."""

import importlib.util
import json
from pathlib import Path

import pytest

from sdesam import plotting

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("sgn_trace_script",
                                                  ROOT / "experiments" / "sgn_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_shape(data):
    assert data["settings"]["experiment"] == "sgn_trace" and "git_commit" in data["settings"]
    assert {c["protocol"] for c in data["curves"]} == {"landscape", "network-poor", "network-init"}
    for curve in data["curves"]:
        assert {"protocol", "algorithm", "micro", "step", "trace", "stderr"} <= curve.keys()
        assert len(curve["step"]) == len(curve["trace"]) == len(curve["stderr"])
        assert all(t > 0 for t in curve["trace"]) and all(s >= 0 for s in curve["stderr"])
    for row in data["final"]:
        assert {"algorithm", "micro", "trace_mean", "trace_std", "seeds"} <= row.keys()
        assert row["trace_mean"] > 0 and row["trace_std"] >= 0
    algorithms = {row["algorithm"] for row in data["final"]}
    assert {"sgd", "sam", "m-sam", "rw-sam"} <= algorithms


def test_tiny_run_and_redraw(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 16, "steps": 20,
                                              "log_every": 10, "micros": [1]})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps_poor": 10, "steps_init": 10,
                                            "seeds": 2, "micros": [1], "log_every": 10,
                                            "gd_steps": 30})
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "sgn_trace.json").read_text())
    check_shape(data)
    # the landscape starts every chain at the poor minimum: zero spread at step 0
    assert all(c["stderr"][0] == 0 for c in data["curves"] if c["protocol"] == "landscape")
    assert plotting.redraw(tmp_path / "sgn_trace.json", tmp_path / "r")[0].is_file()


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    check_shape(json.loads((tmp_path / "sgn_trace.json").read_text()))
