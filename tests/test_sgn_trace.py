"""experiments/sgn_trace.py end to end: the record schema, paired final tr V and a redraw."""

from pathlib import Path

import pytest
import torch

from sdesam.experiment import digits
from sdesam import plotting
from sdesam.algorithms import get_rule
from sdesam.experiment.records import read_record, write_json
import script_module
from test_headlines import headline_numbers


def write_json_only(data, out):
    """``publish`` without the drawing (the test draws once, from the written file)."""
    return [write_json(Path(out) / f"{data['settings']['experiment']}.json", data)]


def load_script():
    return script_module.load_script("experiments/sgn_trace.py", "sgn_trace_script")


def check_shape(data):
    settings, results = data["settings"], data["results"]
    assert set(settings) == {"experiment", "protocol", "quick", "seed", "device", "landscape", "network"}
    assert "git_commit" in data["metadata"] and data["metadata"]["cpu_time_s"] > 0
    assert {c["protocol"] for c in results["curves"]} == {"landscape", "network-poor", "network-init"}
    for curve in results["curves"]:
        assert {"protocol", "rule", "micro", "step", "trace_V", "trace_V_stderr", "chains",
                "diverged"} <= curve.keys()
        assert (curve["micro"] is None) == (not get_rule(curve["rule"]).micro)
        assert len(curve["step"]) == len(curve["trace_V"]) == len(curve["trace_V_stderr"])
        assert all(t > 0 for t in curve["trace_V"]) and all(s >= 0 for s in curve["trace_V_stderr"])
        assert curve["diverged"] == 0
    for row in results["final"]:
        assert {"rule", "micro", "trace_V", "trace_V_std", "chains", "diverged"} <= row.keys()
        assert row["trace_V"] > 0 and row["trace_V_std"] >= 0
    assert {"sgd", "sam", "m-sam", "rw-sam"} <= {row["rule"] for row in results["final"]}


def test_tiny_run_paired_table_and_redraw(tmp_path, monkeypatch, capsys):
    script = load_script()
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "steps": 10,
                                              "log_every": 5, "micros": [1]})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps_poor": 5, "steps_init": 5,
                                            "seeds": 2, "micros": [1], "log_every": 5,
                                            "gd_steps": 10})
    monkeypatch.setattr(script, "publish", write_json_only)
    assert script.main(["--out", str(tmp_path), "--no-progress",
                        "--cache", str(tmp_path / "cache")]) == 0
    data = read_record(tmp_path / "sgn_trace.json")
    check_shape(data)
    results = data["results"]
    # the headline: the landscape's last tr V per rule, then the final tr V per network rule
    headline = headline_numbers(capsys.readouterr().out, "sgn_trace")
    landscape = [c for c in results["curves"] if c["protocol"] == "landscape"]
    assert len(headline) == len(landscape) + len(results["final"])
    assert [row[1] for row in headline[:len(landscape)]] == pytest.approx(
        [c["trace_V"][-1] for c in landscape], rel=1e-3)         # after "step N:"
    # the landscape starts every chain at the poor minimum: zero spread at step 0
    assert all(c["trace_V_stderr"][0] == 0 for c in results["curves"] if c["protocol"] == "landscape")
    # the Table-6 rows summarise the per-seed values; the paired rows difference them by seed
    ends = {(r["protocol"], r["rule"], r["micro"], r["seed"]): r["trace_V"] for r in results["final_seed"]}
    final = {(r["protocol"], r["rule"], r["micro"]): r for r in results["final"]}
    key = ("network-init", "rw-sam", None)
    assert final[key]["trace_V"] == pytest.approx((ends[(*key, 0)] + ends[(*key, 1)]) / 2)
    paired = {(r["protocol"], r["rule"], r["micro"], r["baseline"]): r for r in results["final_paired"]}
    assert len(paired) == 2 * 2 * 3                       # 2 starts x 2 baselines x 3 others
    row = paired[("network-init", "rw-sam", None, "sam")]
    assert row["differences"] == pytest.approx([ends[(*key, s)] - ends[("network-init", "sam", None, s)]
                                                for s in (0, 1)])
    assert plotting.redraw(tmp_path / "sgn_trace.json", tmp_path / "r")[0].is_file()


def test_every_rule_gets_the_same_start_and_batches_for_a_seed(monkeypatch):
    """What makes the per-seed differences paired: for a seed, every rule starts from the same
    initialisation and sees the same sequence of mini-batches."""
    data = digits.load_digits_data(200, 0, seed=0)
    seen: dict[str, list[torch.Tensor]] = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def step(self, model, loss_fn, inputs, targets):
            seen.setdefault(self.name, []).append(targets.clone())

    # continue_training resolves the rule once and hands create the Rule
    monkeypatch.setattr("sdesam.optim.create", lambda rule, *a, **k: Recorder(rule.name))
    for rule, micro in (("sgd", None), ("m-sam", 2), ("rw-sam", None)):
        start = digits.make_model(16, seed=1001)
        log = digits.continue_training(start, rule, data, lr=0.1, batch=20, steps=15, seed=3,
                                       log_every=15, micro=micro, trace=False)
        assert log["distance"] == [0.0, 0.0]               # the recorder never moves the model
    assert len(seen) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["sgd"], seen["m-sam"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["sgd"], seen["rw-sam"]))
    first, again = digits.make_model(16, seed=1001), digits.make_model(16, seed=1001)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    assert load_script().main(["--quick", "--out", str(tmp_path), "--no-progress",
                               "--cache", str(tmp_path / "cache")]) == 0
    check_shape(read_record(tmp_path / "sgn_trace.json"))
