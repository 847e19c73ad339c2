"""Every sweep gives the same result records wherever its tasks run: in this process
(``--jobs 1``), on two spawned worker processes (``--jobs 2``) and on a real Dask cluster reached
by its address (``--scheduler``). Tiny settings; the experiments' own tests check what the
records mean."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from sdesam.experiment.records import read_record, without_fields, write_json
from script_module import load_script

TIMINGS = ("wall_seconds", "train_seconds", "sqrt_cost")
"""What times the machine rather than computes a result, and so differs from run to run: a
trainer run's seconds (generalization) and the timed square roots (sde_corrections, measured in
the main process, not a task)."""


def write_json_only(data: dict, out: str | os.PathLike) -> list[Path]:
    """``publish`` without the drawing."""
    return [write_json(Path(out) / f"{data['settings']['experiment']}.json", data)]



def outcome(out: Path, experiment: str, tasks: Path | None = None) -> dict[str, Any]:
    """What must not depend on where the tasks ran: the data file's settings and results, and
    every task record's settings and results (by file name), as JSON text; and the processes
    that ran the tasks."""
    data = read_record(out / f"{experiment}.json")
    folder = tasks if tasks is not None else out / "tasks"
    records = {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    assert records, f"no task records in {folder}"
    text = json.dumps(without_fields({"settings": data["settings"], "results": data["results"],
                                       "tasks": {name: [r["settings"], r["results"]]
                                                 for name, r in records.items()}}, TIMINGS),
                      sort_keys=True)
    return {"text": text, "pids": {r["metadata"]["pid"] for r in records.values()},
            "executor": data["metadata"].get("executor"), "tasks": len(records)}


def tiny_sde_vs_discrete(script, monkeypatch) -> list[str]:
    monkeypatch.setattr(script, "QUICK", {**script.QUICK, "horizon": 0.4, "chains": 40, "chunk": 20,
                                          "runs": [["usam", None, None], ["sam", None, None]]})
    return ["--quick"]


def tiny_sde_corrections(script, monkeypatch) -> list[str]:
    monkeypatch.setattr(script, "QUICK", {**script.QUICK, "runs": [["m-usam", 1]], "chains": 24,
                                          "chunk": 12, "cost_dims": [2], "cost_chains": 50})
    monkeypatch.setattr(script, "DEFAULT", {**script.DEFAULT, "horizon": 0.4})
    return ["--quick"]


def tiny_escape_speed(script, monkeypatch) -> list[str]:
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "sde_chains": 4,
                                              "steps": 10, "log_every": 5, "micros": [1],
                                              "sde_micros": [1], "drift_draws": 20})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps": 10, "seeds": 2,
                                            "micros": [1], "log_every": 5, "gd_steps": 10})
    return ["--protocol", "landscape"]


def tiny_sgn_trace(script, monkeypatch) -> list[str]:
    monkeypatch.setattr(script, "LANDSCAPE", {**script.LANDSCAPE, "chains": 8, "steps": 10,
                                              "log_every": 5, "micros": [1]})
    monkeypatch.setattr(script, "NETWORK", {**script.NETWORK, "steps_poor": 5, "steps_init": 5,
                                            "seeds": 2, "micros": [1], "log_every": 5,
                                            "gd_steps": 10})
    return ["--protocol", "landscape"]


def tiny_rwsam_mechanism(script, monkeypatch) -> list[str]:
    monkeypatch.setattr(script, "LANDSCAPE_QUICK", {"batches": 100, "offsets": [0.0, 0.5]})
    monkeypatch.setattr(script, "LOGISTIC_QUICK", {"batches": 100})
    monkeypatch.setattr(script, "LAMS_QUICK", [0.0, 4.0])
    return ["--quick", "--problems", "landscape", "logistic"]


def tiny_generalization(script, monkeypatch) -> list[str]:
    from test_generalization import TINY

    monkeypatch.setattr(script, "SETTINGS", {
        **script.SETTINGS, **TINY, "rho_grid": [0.05, 0.1], "lam_multiples": [], "micros": [],
        "dataset_setup": {"digits": {"model": "mlp1d", "lr": 0.05, "epochs": 1}}})
    return []


def network(tiny: Callable) -> Callable:
    """``tiny`` with the network protocol instead of the landscape (seconds more: the poor
    minimum and a trainer run per rule and seed)."""
    def settings(script, monkeypatch) -> list[str]:
        return [*tiny(script, monkeypatch)[:-1], "network"]
    settings.__name__ = f"{tiny.__name__}_network"
    return settings


SWEEPS = {
    "sde_vs_discrete": tiny_sde_vs_discrete,
    "escape_speed": tiny_escape_speed,
    "sgn_trace": tiny_sgn_trace,
    "rwsam_mechanism": tiny_rwsam_mechanism,
}
"""The default run's sweeps: about a minute together on a loaded 2-core machine, most of it
starting the spawned workers (torch and sympy imports)."""
SLOW_SWEEPS = {
    "sde_corrections": tiny_sde_corrections,      # every task derives its SDEs (seconds each)
    "generalization": tiny_generalization,
    "escape_speed-network": network(tiny_escape_speed),
    "sgn_trace-network": network(tiny_sgn_trace),
}


def run_experiment(name: str, tmp_path: Path, monkeypatch, where: list[str]) -> dict[str, Any]:
    """Run the tiny sweep ``name`` with the executor flags ``where`` into a fresh folder."""
    experiment = name.split("-")[0]
    script = load_script(f"experiments/{experiment}.py", f"{experiment}_parallel_script")
    argv = {**SWEEPS, **SLOW_SWEEPS}[name](script, monkeypatch)
    monkeypatch.setattr(script, "publish", write_json_only, raising=False)
    out = tmp_path / "_".join(where).replace("/", "").replace(":", "")
    flags = ["--out", str(out), "--no-progress", *where]
    if experiment in ("escape_speed", "sgn_trace", "rwsam_mechanism"):
        flags += ["--cache", str(tmp_path / "cache")]
    if experiment == "generalization":
        flags += ["--runs-dir", str(out / "runs")]
    assert script.main([*argv, *flags]) == 0
    return outcome(out, experiment, out / "runs" / "tasks" if experiment == "generalization" else None)


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """The ``--jobs 1`` outcome of a tiny sweep, run once per module (the Dask test reuses it)."""
    done: dict[str, dict[str, Any]] = {}

    def serial(name: str) -> dict[str, Any]:
        if name not in done:
            with pytest.MonkeyPatch.context() as monkeypatch:
                done[name] = run_experiment(name, tmp_path_factory.mktemp(name), monkeypatch,
                                            ["--jobs", "1"])
        return done[name]
    return serial


def check_same_records(name: str, tmp_path: Path, monkeypatch, serial_runs) -> None:
    serial = serial_runs(name)
    pooled = run_experiment(name, tmp_path, monkeypatch, ["--jobs", "2"])
    assert serial["executor"] == "in-process" and pooled["executor"] == "2 local processes"
    assert serial["pids"] == {os.getpid()} and os.getpid() not in pooled["pids"]
    assert pooled["tasks"] == serial["tasks"] > 1
    assert pooled["text"] == serial["text"]


@pytest.mark.parametrize("name", SWEEPS)
def test_jobs_1_and_jobs_2_give_bit_identical_records(name, tmp_path, monkeypatch, serial_runs):
    check_same_records(name, tmp_path, monkeypatch, serial_runs)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_SWEEPS)
def test_jobs_1_and_jobs_2_give_bit_identical_records_slow(name, tmp_path, monkeypatch,
                                                          serial_runs):
    check_same_records(name, tmp_path, monkeypatch, serial_runs)


def test_a_real_dask_cluster_by_address_gives_the_records_of_jobs_1(tmp_path, monkeypatch,
                                                                    serial_runs):
    distributed = pytest.importorskip("distributed")
    serial = serial_runs("sde_vs_discrete")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, silence_logs=40) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        remote = run_experiment("sde_vs_discrete", tmp_path, monkeypatch, ["--scheduler", address])
    assert remote["executor"] == f"dask {address}"
    assert os.getpid() not in remote["pids"] and len(remote["pids"]) >= 1
    assert remote["text"] == serial["text"]


def test_a_failed_task_is_one_line_and_status_1_and_keeps_the_finished_records(tmp_path, monkeypatch,
                                                                             capsys):
    script = load_script("experiments/sde_vs_discrete.py", "sde_vs_discrete_failing_script")
    argv = tiny_sde_vs_discrete(script, monkeypatch)
    real = script.sde.simulate

    def failing(*args, **kwargs):
        if kwargs["eta"] == 0.2:
            raise RuntimeError("the integrator broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(script.sde, "simulate", failing)
    out = tmp_path / "out"
    assert script.main([*argv, "--out", str(out), "--no-progress", "--jobs", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("sde_vs_discrete: error: task usam m=None lam=None "
                                              "eta=0.2")
    assert "RuntimeError: the integrator broke" in err and '"eta":0.2' in err
    kept = len(list((out / "tasks").glob("*.json")))
    assert kept > 0 and f"{kept} of " in err and not (out / "sde_vs_discrete.json").exists()
