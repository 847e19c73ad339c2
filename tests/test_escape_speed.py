"""experiments/escape_speed.py end to end: the record schema, paired exit steps, a redraw."""

import importlib.util
from pathlib import Path

import pytest

from sdesam import plotting
from sdesam.algorithms import get_rule
from sdesam.experiment.records import read_record

ROOT = Path(__file__).resolve().parents[1]
CURVE_KEYS = {"protocol", "rule", "micro", "kind", "step", "escaped_fraction", "ci_low", "ci_high"}
EXIT_KEYS = {"protocol", "rule", "micro", "kind", "mean", "ci_low", "ci_high", "escaped", "chains",
             "diverged"}


def load_script():
    spec = importlib.util.spec_from_file_location("escape_speed_script",
                                                  ROOT / "experiments" / "escape_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(monkeypatch, script):
    """Shrink both protocols to seconds."""
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "sde_chains": 4,
                                              "steps": 10, "log_every": 5, "sde_micros": [1]})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps": 10, "seeds": 2,
                                            "micros": [1], "log_every": 5, "gd_steps": 10})


def check_shape(data, protocols):
    settings, results = data["settings"], data["results"]
    assert set(settings) == {"experiment", "protocol", "quick", "seed", "device", *protocols}
    assert "rho_sam" not in settings.get("landscape", {}) and "lam" not in settings.get("network", {})
    assert data["metadata"]["wall_time_s"] > 0 and "versions" in data["metadata"]
    assert {c["protocol"] for c in results["curves"]} == set(protocols)
    for row in results["curves"] + results["exit_time"]:
        assert (row["micro"] is None) == (not get_rule(row["rule"]).micro)
    for curve in results["curves"]:
        assert CURVE_KEYS <= curve.keys()
        n = len(curve["step"])
        assert n == len(curve["escaped_fraction"]) == len(curve["ci_low"]) == len(curve["ci_high"])
        for low, mid, high in zip(curve["ci_low"], curve["escaped_fraction"], curve["ci_high"]):
            assert low - 1e-12 <= mid <= high + 1e-12
        assert all(a <= b for a, b in zip(curve["escaped_fraction"], curve["escaped_fraction"][1:]))
    for entry in results["exit_time"]:
        assert EXIT_KEYS <= entry.keys() and 0 <= entry["escaped"] <= entry["chains"]
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"] and entry["diverged"] == 0


def test_tiny_run_both_protocols_and_redraw(tmp_path, monkeypatch):
    script = load_script()
    tiny(monkeypatch, script)
    assert script.main(["--out", str(tmp_path), "--no-progress",
                        "--cache", str(tmp_path / "cache")]) == 0
    data = read_record(tmp_path / "escape_speed.json")
    check_shape(data, ["landscape", "network"])
    results = data["results"]
    kinds = {(c["rule"], c["kind"]) for c in results["curves"] if c["protocol"] == "landscape"}
    assert {("sgd", "discrete"), ("m-usam", "sde"), ("usam", "sde"), ("m-sam", "discrete"),
            ("rw-sam", "discrete")} <= kinds
    network = [e for e in results["exit_time"] if e["protocol"] == "network"]
    assert all(e["chains"] == 2 for e in network)               # chains = seeds
    assert {e["rule"] for e in network} == {"sgd", "m-sam", "sam", "rw-sam"}
    # per-seed exit steps, and their paired differences against SGD and SAM by seed
    per_seed = results["network_exit_seed"]
    assert len(per_seed) == 4 * 2 and {r["seed"] for r in per_seed} == {0, 1}
    by = {(r["rule"], r["micro"], r["seed"]): r["restricted_exit_step"] for r in per_seed}
    paired = {(r["rule"], r["micro"], r["baseline"]): r for r in results["network_exit_paired"]}
    assert len(paired) == 2 * 3
    rw = paired[("rw-sam", None, "sam")]
    assert rw["n"] == 2 and rw["differences"] == [by[("rw-sam", None, s)] - by[("sam", None, s)]
                                                  for s in (0, 1)]
    barriers = {(p["rule"], p["micro"]): p["barrier"] for p in results["potentials"]}
    assert barriers[("sgd", None)] > barriers[("usam", None)] > barriers[("m-usam", 1)]
    assert results["poor_minimum"][0]["lam"] > 0 and results["landscape_parameters"][0]["rho_sam"] > 0
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
        runs.append(read_record(tmp_path / name / "escape_speed.json")["results"]["curves"])
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress",
                               "--cache", str(tmp_path / "cache")]) == 0
    check_shape(read_record(tmp_path / "escape_speed.json"), ["landscape", "network"])
