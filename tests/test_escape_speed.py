"""experiments/escape_speed.py end to end: the documented JSON shape, a redraw, determinism."""

import importlib.util
import json
from pathlib import Path

import pytest

from sdesam import plotting

ROOT = Path(__file__).resolve().parents[1]
CURVE_KEYS = {"protocol", "algorithm", "micro", "kind", "step", "escaped_fraction", "ci_low", "ci_high"}
EXIT_KEYS = {"protocol", "algorithm", "micro", "kind", "mean", "ci_low", "ci_high", "escaped", "chains"}


def load_script():
    spec = importlib.util.spec_from_file_location("escape_speed_script",
                                                  ROOT / "experiments" / "escape_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_shape(data, protocols):
    assert data["settings"]["experiment"] == "escape_speed"
    assert data["settings"]["wall_time_s"] > 0 and "versions" in data["settings"]
    assert {c["protocol"] for c in data["curves"]} == set(protocols)
    for curve in data["curves"]:
        assert CURVE_KEYS <= curve.keys()
        n = len(curve["step"])
        assert n == len(curve["escaped_fraction"]) == len(curve["ci_low"]) == len(curve["ci_high"])
        for low, mid, high in zip(curve["ci_low"], curve["escaped_fraction"], curve["ci_high"]):
            assert low - 1e-12 <= mid <= high + 1e-12
        assert all(a <= b for a, b in zip(curve["escaped_fraction"], curve["escaped_fraction"][1:]))
    for entry in data["exit_time"]:
        assert EXIT_KEYS <= entry.keys() and 0 <= entry["escaped"] <= entry["chains"]
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]


def test_tiny_run_both_protocols_and_redraw(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 16, "sde_chains": 8, "steps": 30,
                                              "log_every": 10})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps": 20, "seeds": 2,
                                            "micros": [1], "log_every": 10, "gd_steps": 30})
    assert script.main(["--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "escape_speed.json").read_text())
    check_shape(data, ["landscape", "network"])
    kinds = {(c["algorithm"], c["kind"]) for c in data["curves"] if c["protocol"] == "landscape"}
    assert {("sgd", "discrete"), ("m-usam", "sde"), ("m-sam", "discrete"), ("rw-sam", "discrete")} <= kinds
    network = [e for e in data["exit_time"] if e["protocol"] == "network"]
    assert all(e["chains"] == 2 for e in network)               # chains = seeds
    assert {e["algorithm"] for e in network} == {"sgd", "m-sam", "sam", "rw-sam"}
    assert sorted(p.name for p in plotting.redraw(tmp_path / "escape_speed.json", tmp_path / "r")) \
        == ["escape_speed.pdf", "escape_speed.png"]


@pytest.mark.slow
def test_landscape_protocol_is_deterministic(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "sde_chains": 4, "steps": 20,
                                              "log_every": 5})
    runs = []
    for name in ("a", "b"):
        script.main(["--protocol", "landscape", "--out", str(tmp_path / name), "--no-progress",
                     "--seed", "3"])
        runs.append(json.loads((tmp_path / name / "escape_speed.json").read_text())["curves"])
    assert runs[0] == runs[1]


def test_cuda_request_without_cuda_is_rejected(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="device"):
        load_script().main(["--device", "cuda", "--out", str(tmp_path)])


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    check_shape(json.loads((tmp_path / "escape_speed.json").read_text()), ["landscape", "network"])
