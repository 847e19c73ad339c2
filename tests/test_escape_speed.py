"""experiments/escape_speed.py end to end: the record schema, paired exit steps, a redraw."""

from pathlib import Path

import pytest
import torch

from sdesam import plotting
from sdesam.algorithms import get_rule
from sdesam.experiment.records import read_record, write_json
import script_module
from test_headlines import headline_numbers

CURVE_KEYS = {"protocol", "rule", "micro", "kind", "step", "escaped_fraction", "ci_low", "ci_high"}
EXIT_KEYS = {"protocol", "rule", "micro", "kind", "mean", "ci_low", "ci_high", "escaped", "chains",
             "diverged"}
LANDSCAPE_EXIT_KEYS = EXIT_KEYS | {"left_exit", "left_exit_fraction"}


def write_json_only(data, out):
    """``publish`` without the drawing (the test draws once, from the written file)."""
    return [write_json(Path(out) / f"{data['settings']['experiment']}.json", data)]


def load_script():
    return script_module.load_script("experiments/escape_speed.py", "escape_speed_script")


def tiny(monkeypatch, script):
    """Shrink both protocols to seconds."""
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "sde_chains": 4,
                                              "steps": 10, "log_every": 5, "sde_micros": [1],
                                              "micros": [1, 16], "drift_draws": 20})
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
        keys = LANDSCAPE_EXIT_KEYS if entry["protocol"] == "landscape" else EXIT_KEYS
        assert keys <= entry.keys() and 0 <= entry["escaped"] <= entry["chains"]
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"] and entry["diverged"] == 0


def test_tiny_run_both_protocols_and_redraw(tmp_path, monkeypatch, capsys):
    script = load_script()
    tiny(monkeypatch, script)
    monkeypatch.setattr(script, "publish", write_json_only)
    assert script.main(["--out", str(tmp_path), "--no-progress",
                        "--cache", str(tmp_path / "cache")]) == 0
    data = read_record(tmp_path / "escape_speed.json")
    # the headline: every rule's exit step [interval] and escaped/chains, as in the record
    headline = headline_numbers(capsys.readouterr().out, "escape_speed")
    assert [row[0] for row in headline] == pytest.approx([e["mean"] for e in data["results"]["exit_time"]],
                                                         rel=1e-2)
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
    # landscape: per-chain paired exit times, discrete against SGD and SAM, SDE against SGD's SDE
    chains = {"discrete": 8, "sde": 4}
    landscape = {(r["kind"], r["rule"], r["micro"], r["baseline"]): r
                 for r in results["landscape_exit_paired"]}
    assert {("discrete", "m-sam", 1, "sgd"), ("discrete", "m-sam", 1, "sam"),
            ("discrete", "sgd", None, "sam"), ("sde", "usam", None, "sgd")} <= landscape.keys()
    assert not any(kind == "sde" and base == "sam" for kind, _, _, base in landscape)
    assert all(r["n"] + r["diverged"] == chains[r["kind"]] for r in landscape.values())
    assert {r["rule"] for r in results["stable_points"]} == {"sgd", "m-usam", "usam", "m-sam",
                                                             "sam", "rw-sam"}
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


def test_landscape_rules_share_batches_chain_by_chain(tmp_path, monkeypatch):
    """What makes the landscape differences paired: with the same seed, chain k of SGD and of
    m-SAM draw the same batch indices (SGD and USAM at rho = 0 then give identical paths)."""
    script = load_script()
    seen = []
    draw = script.ensemble.draw_batches

    def recording(*args, **kwargs):
        seen.append(draw(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(script.ensemble, "draw_batches", recording)
    problem = script.SharpFlatLandscape(n=32)
    for rule, micro in (("sgd", None), ("m-sam", 2)):
        script.ensemble.run(problem, rule, eta=0.02, rho=0.05 if micro else None, batch=16,
                            micro=micro, x0=problem.poor_minimum, steps=3, chains=5, seed=7)
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen[:3], seen[3:]))


def test_small_m_sam_radius_makes_a_left_stable_point_and_left_exits_are_counted():
    """The default m = 1 SAM radius gives m-SAM's mean drift a stable point near x = -0.7 that
    f lacks (SGD's and SAM's drifts have none); chains started there stay and are counted as
    left exits, while SGD chains from the same point return to the poor well."""
    script = load_script()
    problem = script.SharpFlatLandscape(n=32)
    noise_scale = problem.trace_V(problem.poor_minimum).sqrt().item()
    rho_sam = script.LANDSCAPE["rho"] * noise_scale
    x = torch.linspace(-2.0, 2.6, script.STABLE_GRID, dtype=torch.float64).unsqueeze(-1)
    zeros = {rule: script.stable_zeros(x, script.mean_direction(
        problem, rule, x, rho=rho_sam, batch=16, micro=micro, lam=None, draws=100, seed=0))
        for rule, micro in (("sgd", None), ("m-sam", 1), ("sam", None))}
    minima = (problem.poor_minimum.item(), problem.good_minimum.item())
    spurious = {rule: [z for z in points if min(abs(z - m) for m in minima) > script.STABLE_MATCH]
                for rule, points in zeros.items()}
    assert len(zeros["sgd"]) == len(zeros["sam"]) == 2
    assert spurious["sgd"] == spurious["sam"] == [] and len(spurious["m-sam"]) == 1
    assert -0.9 < spurious["m-sam"][0] < -0.6
    left_edge = problem.sharp[0] - script.LEFT_EDGE_WIDTHS * problem.sharp[2]
    start = torch.tensor([-0.75], dtype=torch.float64)
    counts = {}
    for rule, micro, rho in (("m-sam", 1, rho_sam), ("sgd", None, 0.0)):
        run = script.ensemble.run(problem, rule, eta=0.02, rho=rho, batch=16, micro=micro,
                                  x0=start, steps=200, chains=30, seed=0)
        exits = script.stats.first_exit(run.states.numpy(), problem.escaped)
        counts[rule] = int(script.left_exits(exits, run.final.numpy(), run.diverged.numpy(),
                                             left_edge).sum())
    assert counts["m-sam"] >= 22 and counts["sgd"] == 0
