"""experiments/sde_vs_discrete.py end to end: the one record schema, orders with intervals,
chain counts, a redraw, and the default output folder."""

import numpy as np
import pytest

from sdesam import plotting
from sdesam.experiment.records import read_record
import script_module
from test_headlines import headline_numbers


def load_script():
    return script_module.load_script("experiments/sde_vs_discrete.py", "sde_vs_discrete_script")


def check_record(data, chains):
    settings, results = data["settings"], data["results"]
    assert set(data) == {"settings", "metadata", "results"}
    assert settings["experiment"] == "sde_vs_discrete" and settings["chains"] == chains
    assert "wall_time_s" not in settings and data["metadata"]["wall_time_s"] > 0
    assert set(results) == {"weak_errors", "orders", "expansions"}
    for row in results["weak_errors"]:
        assert row["weak_error"] >= 0 and row["weak_error_stderr"] > 0 and row["weak_error_T"] >= 0
        assert abs(row["error_T"]) == pytest.approx(row["weak_error_T"])
        assert row["control_variates"] == settings["control_variates"]
        reductions = (row["discrete_variance_reduction"], row["sde_variance_reduction"])
        assert all(r > 1 for r in reductions) if settings["control_variates"] else reductions == (1, 1)
        assert row["chains"] == chains and row["diverged"] == 0
        assert row["variant"] in ("full", "without_noise_term")
        assert row["dt"] == pytest.approx(row["eta"] / settings["substeps"])
        assert all(not isinstance(value, (dict, list)) for value in row.values())
    assert {row["sweep"] for row in results["weak_errors"]} == {"coupled", "fixed_rho", "fixed_eta"}
    for row in results["weak_errors"]:
        if row["sweep"] == "coupled" and row["rule"] != "sgd":
            assert abs(row["rho"] - settings["kappa"] * row["eta"] ** 0.5) < 1e-12
    runs = {(r["rule"], r["micro"], r["lam"]) for r in results["orders"]}
    assert ("usam", None, None) in runs and ("rw-sam", None, 4.0) in runs and ("sam", None, None) in runs
    for fit in results["orders"]:
        assert fit["order_ci_low"] <= fit["order"] <= fit["order_ci_high"]
        assert fit["local_order_ci_low"] <= fit["local_order"] <= fit["local_order_ci_high"]
        assert fit["measure"] in ("max_over_steps", "at_horizon") and fit["chains"] == chains
        assert fit["points"] == len(settings["etas"]) and fit["min_signal"] > 0
    keys = {(r["rule"], r["micro"], r["lam"], r["variant"]) for r in results["orders"]}
    assert {(e["rule"], e["micro"], e["lam"], e["variant"]) for e in results["expansions"]} == keys
    for fit in results["expansions"]:
        assert fit["a_ci_low"] <= fit["a"] <= fit["a_ci_high"] and fit["chi2_per_dof"] >= 0
        if fit["variant"] == "full":
            assert fit["predicted_a"] == 0.0 and "a_minus_full" not in fit
        else:        # every run without its term has one: a prediction and a - a_full
            assert abs(fit["predicted_a"]) > 1e-4
            assert fit["a_minus_full_ci_low"] <= fit["a_minus_full"] <= fit["a_minus_full_ci_high"]


def test_quick_run_writes_the_record_and_figure_and_redraws(tmp_path, capsys):
    script = load_script()
    assert script.main(["--quick", "--out", str(tmp_path), "--chains", "200", "--no-progress"]) == 0
    data = read_record(tmp_path / "sde_vs_discrete.json")
    check_record(data, 200)
    # the headline: every fitted order with its interval, then the chain count
    headline = headline_numbers(capsys.readouterr().out, "sde_vs_discrete")
    orders = data["results"]["orders"]
    ablated = [e for e in data["results"]["expansions"] if "a_minus_full" in e]
    assert len(headline) == len(orders) + len(ablated) + 1 and headline[-1][0] == 200
    assert [row[0] for row in headline[:len(orders)]] == pytest.approx(
        [o["order"] for o in orders], abs=0.01)
    # then a - a_full without the term and the predicted a, x1e3
    assert [v for row in headline[len(orders):-1] for v in (row[0], row[-1])] == pytest.approx(
        [1e3 * v for e in ablated for v in (e["a_minus_full"], e["predicted_a"])], rel=0.01)
    assert (tmp_path / "sde_vs_discrete.png").stat().st_size > 0
    assert len(list((tmp_path / "tasks").glob("*.json"))) == data["metadata"]["tasks"]
    paths = plotting.redraw(tmp_path / "sde_vs_discrete.json", tmp_path / "again")
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.exists() for p in paths)


def test_plain_monte_carlo_agrees_with_the_controlled_run_within_its_error(tmp_path):
    script = load_script()
    common = ["--quick", "--chains", "300", "--no-progress", "--jobs", "1", "--seed", "4"]
    assert script.main([*common, "--out", str(tmp_path / "cv")]) == 0
    assert script.main([*common, "--plain", "--out", str(tmp_path / "plain")]) == 0
    rows = {}
    for name in ("cv", "plain"):
        data = read_record(tmp_path / name / "sde_vs_discrete.json")
        check_record(data, 300)
        rows[name] = {(r["sweep"], r["rule"], r["micro"], r["lam"], r["eta"], r["rho"],
                       r["test_fn"], r["variant"]): r for r in data["results"]["weak_errors"]}
    assert rows["cv"].keys() == rows["plain"].keys()
    z = [(rows["cv"][k]["error_T"] - rows["plain"][k]["error_T"])
         / np.hypot(rows["cv"][k]["weak_error_T_stderr"], rows["plain"][k]["weak_error_T_stderr"])
         for k in rows["cv"]]
    assert np.mean(np.abs(z) < 3.5) > 0.97          # the same quantity, the same seeds
    ratio = [rows["plain"][k]["weak_error_T_stderr"] / rows["cv"][k]["weak_error_T_stderr"]
             for k in rows["cv"]]
    assert np.median(ratio) > 5                     # and the controlled one far less noisy


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_task_records(tmp_path, monkeypatch, capsys):
    script = load_script()
    calls = []
    real = script.ensemble.run

    def failing_third(*args, **kwargs):
        calls.append(kwargs["eta"])
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(script.ensemble, "run", failing_third)
    argv = ["--quick", "--out", str(tmp_path), "--chains", "50", "--no-progress", "--jobs", "1"]
    assert script.main(argv) == 1                 # one line naming the task, status 1
    err = capsys.readouterr().err
    assert "sde_vs_discrete: error: task " in err and "RuntimeError: killed" in err
    kept = {path: path.read_bytes() for path in (tmp_path / "tasks").glob("*.json")}
    assert len(kept) >= 2 and f"{len(kept)} of " in err
    monkeypatch.setattr(script.ensemble, "run", real)
    assert script.main(argv) == 0
    data = read_record(tmp_path / "sde_vs_discrete.json")
    check_record(data, 50)
    assert all(path.read_bytes() == text for path, text in kept.items())     # not run again


def test_bad_device_is_refused_before_any_work(tmp_path):
    script = load_script()
    with pytest.raises(ValueError, match="device"):
        script.main(["--quick", "--out", str(tmp_path), "--device", "tpu"])
    assert not (tmp_path / "sde_vs_discrete.json").exists()


@pytest.mark.slow
def test_quick_settings_show_the_variance_term_lowers_the_error(tmp_path):
    """With enough chains the full SDE of m-USAM (m = 1) is closer to the discrete rule than the
    SDE without its tr V term at every eta of the coupled sweep."""
    script = load_script()
    script.main(["--quick", "--out", str(tmp_path), "--chains", "20000", "--no-progress"])
    rows = read_record(tmp_path / "sde_vs_discrete.json")["results"]["weak_errors"]
    chosen = [r for r in rows if r["sweep"] == "coupled" and r["rule"] == "m-usam"
              and r["test_fn"] == "loss"]
    for eta in {r["eta"] for r in chosen}:
        full, without = (next(r for r in chosen if r["eta"] == eta and r["variant"] == v)
                         for v in ("full", "without_noise_term"))
        assert full["weak_error"] < without["weak_error"]
