"""The task executor: the same records in-process, on a process pool and on a real Dask
cluster; resume, failures, seeds from identity, flag checks, blocks of chains."""

from __future__ import annotations

import json
import os
import random
import socket
import time

import pytest
import torch

from sdesam.cli import OneLineParser
from sdesam.experiment.executor import (InProcessExecutor, add_executor_arguments,
                                        check_scheduler, describe, make_executor)
from sdesam.experiment.tasks import (Task, TaskError, block_tasks, canonical_json, chain_blocks,
                                     moments_json, pool_moments, record_path, run_tasks)
from sdesam.problems import Quadratic
from sdesam.simulation import ensemble
from sdesam.simulation.chains import TEST_FUNCTIONS, Moments
from sdesam.validation import InputError

TEST_FNS = ["loss", "sq_norm"]


def quadratic(settings: dict) -> Quadratic:
    """A small random quadratic family drawn from ``settings['data_seed']``."""
    generator = torch.Generator().manual_seed(settings["data_seed"])
    n, d = settings["n"], settings["dim"]
    a = torch.randn(n, d, d, generator=generator, dtype=torch.float64)
    hessians = a @ a.transpose(1, 2) / d + 0.5 * torch.eye(d, dtype=torch.float64)
    return Quadratic(hessians, torch.randn(n, d, generator=generator, dtype=torch.float64))


def ensemble_task(settings: dict, seed: int) -> dict:
    """End moments of a short ensemble run (the unit of a weak-error sweep)."""
    run = ensemble.run(quadratic(settings), settings["rule"], eta=settings["eta"],
                       rho=settings["rho"], batch=settings["batch"], x0=[1.0] * settings["dim"],
                       steps=settings["steps"], chains=settings["chains"], seed=seed,
                       every=None, keep_states=False, test_fns=TEST_FNS)
    return {"moments": [{"test_fn": name, **moments_json(run.moments[name])} for name in TEST_FNS]}


def failing_task(settings: dict, seed: int) -> dict:
    """A task that fails: it must never run when its record exists."""
    raise RuntimeError(f"boom at eta={settings['eta']}")


def refusing_task(settings: dict, seed: int) -> dict:
    """A task that refuses its settings."""
    raise InputError(f"eta={settings['eta']} is refused")


def slow_task(settings: dict, seed: int) -> dict:
    """A task that takes a moment, so it is still running when another fails."""
    time.sleep(settings["sleep"])
    return {"done": [{"seed": seed}]}


def sweep(function=ensemble_task, sweep_seed: int = 7) -> list[Task]:
    """Six cells of a small weak-error-like sweep."""
    base = {"experiment": "executor_test", "n": 6, "dim": 3, "data_seed": 1, "batch": 2,
            "steps": 20, "chains": 64}
    return [Task(function, {**base, "rule": rule, "eta": eta, "rho": 0.05}, sweep_seed,
                 name=f"{rule} eta={eta}")
            for rule in ("usam", "sam") for eta in (0.1, 0.05, 0.025)]


def results_of(records: list[dict]) -> list[str]:
    """The settings and results of each record as canonical JSON (NaN-safe equality)."""
    return [json.dumps([r["settings"], r["results"]], sort_keys=True) for r in records]


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> list[dict]:
    """The sweep's records run in this process."""
    with make_executor(jobs=1) as executor:
        return run_tasks(sweep(), executor, tmp_path_factory.mktemp("serial"), progress=False)


def test_in_process_runs_here_and_writes_one_record_per_task(serial, tmp_path):
    assert len(serial) == 6
    assert {r["metadata"]["pid"] for r in serial} == {os.getpid()}
    assert [r["settings"]["eta"] for r in serial] == [0.1, 0.05, 0.025] * 2
    assert all(r["results"]["moments"][0]["count"] == [64, 64] for r in serial)


def test_process_pool_gives_the_same_records(serial, tmp_path):
    with make_executor(jobs=2) as executor:
        records = run_tasks(sweep(), executor, tmp_path, progress=False)
    assert results_of(records) == results_of(serial)
    pids = {r["metadata"]["pid"] for r in records}
    assert os.getpid() not in pids and len(pids) >= 1
    on_disk = [json.loads(record_path(tmp_path, task).read_text()) for task in sweep()]
    assert results_of(on_disk) == results_of(serial)


def test_dask_cluster_by_address_gives_the_same_records(serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    # two threads per worker process: its tasks must run one at a time, not race for the
    # process's torch threads and global generators
    drawing = [Task(global_rng_task, {"experiment": "executor_test", "k": k}) for k in range(6)]
    with make_executor(jobs=1) as executor:
        here = run_tasks(drawing, executor, tmp_path / "here", progress=False)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=2,
                                  dashboard_address=None, silence_logs=40) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        with make_executor(scheduler=address) as executor:
            records = run_tasks(sweep(), executor, tmp_path / "sweep", progress=False)
            there = run_tasks(drawing, executor, tmp_path / "there", progress=False)
    assert results_of(records) == results_of(serial)
    assert os.getpid() not in {r["metadata"]["pid"] for r in records}
    # torch's and numpy's streams are the task's alone; Python's ``random`` is not under Dask,
    # whose event loop draws from it (tornado's callback jitter), so it is left out there
    assert results_of(without_python_random(there)) == results_of(without_python_random(here))


def without_python_random(records: list[dict]) -> list[dict]:
    """The records of :func:`global_rng_task` without their ``random`` draws."""
    return [{**r, "results": {"draws": [{k: v for k, v in d.items() if k != "random"}
                                        for d in r["results"]["draws"]]}} for r in records]


def test_existing_records_are_skipped_so_a_sweep_resumes(serial, tmp_path):
    tasks = sweep()
    with make_executor(jobs=1) as executor:
        run_tasks(tasks[:4], executor, tmp_path, progress=False)            # "killed" after 4
        # the same settings with a failing function: the 4 recorded are never run again
        resumed = sweep(failing_task)[:4] + tasks[4:]
        records = run_tasks(resumed, executor, tmp_path, progress=False)
    assert results_of(records) == results_of(serial)


def test_a_failure_names_the_task_and_keeps_finished_records(tmp_path):
    tasks = sweep()
    tasks[2] = sweep(failing_task)[2]
    with make_executor(jobs=1) as executor, pytest.raises(TaskError) as caught:
        run_tasks(tasks, executor, tmp_path, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "usam eta=0.025" in message and "boom at eta=0.025" in message
    assert '"eta":0.025' in message and '"rule":"usam"' in message
    assert "2 of 6 records kept" in message
    written = [record_path(tmp_path, task).exists() for task in tasks]
    assert written == [True, True, False, False, False, False]     # stopped as a loop would


def test_a_pool_failure_lets_running_tasks_finish_and_keeps_their_records(tmp_path):
    base = {"experiment": "executor_test", "rule": "usam", "sleep": 1.0}
    slow = Task(slow_task, {**base, "eta": 1.0}, name="slow")
    bad = Task(refusing_task, {**base, "eta": 2.0}, name="bad")
    with make_executor(jobs=2) as executor, pytest.raises(InputError, match="task bad failed"):
        run_tasks([slow, bad], executor, tmp_path, progress=False)
    assert record_path(tmp_path, slow).exists() and not record_path(tmp_path, bad).exists()


def test_seeds_come_from_identity_not_order(serial, tmp_path):
    tasks = sweep()
    shuffled = tasks[:]
    random.Random(3).shuffle(shuffled)
    assert [t.key for t in shuffled] != [t.key for t in tasks]
    with make_executor(jobs=1) as executor:
        records = run_tasks(shuffled, executor, tmp_path, progress=False)
    assert [r["settings"]["eta"] for r in records] == [t.settings["eta"] for t in shuffled]
    by_key = {t.key: r for t, r in zip(shuffled, records)}
    assert results_of([by_key[t.key] for t in tasks]) == results_of(serial)
    # the seed follows the settings and the sweep seed, not the name or the function
    again = Task(failing_task, dict(tasks[0].settings), 7, name="other")
    assert again.seed == tasks[0].seed and again.key == tasks[0].key
    assert sweep(sweep_seed=8)[0].seed != tasks[0].seed
    assert len({t.seed for t in tasks}) == len(tasks)
    reordered = Task(ensemble_task, dict(reversed(list(tasks[0].settings.items()))), 7)
    assert reordered.key == tasks[0].key


def test_tasks_refuse_what_cannot_run_anywhere(tmp_path):
    base = {"experiment": "executor_test", "eta": 0.1}
    with pytest.raises(InputError, match="module-level"):
        Task(lambda settings, seed: {}, base)
    with pytest.raises(InputError, match="JSON"):
        Task(ensemble_task, {**base, "x": object()})
    with pytest.raises(InputError, match="JSON"):
        Task(ensemble_task, {**base, "x": float("nan")})
    with pytest.raises(InputError, match="experiment"):
        Task(ensemble_task, {"eta": 0.1})
    with pytest.raises(InputError, match="same settings"):
        run_tasks([Task(ensemble_task, base), Task(failing_task, base)], InProcessExecutor(),
                  tmp_path, progress=False)
    # a record file that holds another task's settings is named, not silently reused
    task = Task(slow_task, {**base, "sleep": 0.0})
    with make_executor(jobs=1) as executor:
        run_tasks([task], executor, tmp_path, progress=False)
    path = record_path(tmp_path, task)
    record = json.loads(path.read_text())
    record["settings"]["sleep"] = 5
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="other settings"):
        run_tasks([task], InProcessExecutor(), tmp_path, progress=False)


@pytest.mark.parametrize("jobs, scheduler, match", [
    (0, None, "--jobs must be a positive integer; got 0"),
    (-2, None, "--jobs must be a positive integer"),
    ("2", None, "--jobs must be a positive integer; got '2'"),
    (True, None, "--jobs must be a positive integer"),
    (None, "localhost", "--scheduler must be a Dask scheduler address"),
    (None, "http://node:8786", "--scheduler must be a Dask scheduler address"),
    (None, "tcp://node:99999", "--scheduler must be a Dask scheduler address"),
    (None, "tcp://no de:8786", "--scheduler must be a Dask scheduler address"),
    (2, "tcp://node:8786", "--jobs and --scheduler exclude each other"),
])
def test_bad_jobs_and_scheduler_are_one_line_input_errors(jobs, scheduler, match):
    with pytest.raises(InputError, match=match) as caught:
        with make_executor(jobs, scheduler):
            pass
    assert "\n" not in str(caught.value)


def test_scheduler_addresses_are_normalised():
    assert check_scheduler("node01:8786") == "tcp://node01:8786"
    assert check_scheduler("tls://10.0.0.2:8786") == "tls://10.0.0.2:8786"
    assert check_scheduler("tcp://[::1]:8786") == "tcp://[::1]:8786"
    assert describe(1) == "in-process" and describe(3) == "3 local processes"
    assert describe(scheduler="h:1") == "dask tcp://h:1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "silent"])
def test_an_unreachable_scheduler_fails_fast_with_one_line(listening):
    pytest.importorskip("distributed")
    silent = socket.socket()
    try:
        if listening:       # accepts connections but never speaks Dask
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
        else:
            port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        start = time.perf_counter()
        with pytest.raises(InputError) as caught:
            with make_executor(scheduler=address, connect_timeout=1.0):
                pass
        elapsed = time.perf_counter() - start
    finally:
        silent.close()
    message = str(caught.value)
    assert message.startswith(f"--scheduler {address}: no Dask scheduler answered within 1 s")
    assert "\n" not in message and elapsed < 10


def test_flags_are_added_with_one_help():
    parser = add_executor_arguments(OneLineParser(prog="x"))
    args = parser.parse_args(["--jobs", "2", "--scheduler", "tcp://h:8786"])
    assert (args.jobs, args.scheduler) == (2, "tcp://h:8786")
    assert parser.parse_args([]).jobs is None
    text = " ".join(parser.format_help().split())
    assert "--jobs 1 runs them in this process" in text and "tcp://HOST:8786" in text
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--jobs", "many"])
    assert exit_.value.code == 2


def test_in_process_executor_is_a_plain_loop():
    executor = InProcessExecutor()
    calls = []
    futures = [executor.submit(calls.append, k) for k in range(3)]
    assert calls == [0, 1, 2] and all(f.done() for f in futures)
    failed = executor.submit(int, "x")
    assert isinstance(failed.exception(), ValueError)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(int, "1")


def test_chains_split_into_blocks_with_their_own_seeds():
    assert chain_blocks(2500, 1000) == [1000, 1000, 500]
    assert chain_blocks(3, 10) == [3]
    with pytest.raises(InputError, match="block must be a positive integer"):
        chain_blocks(10, 0)
    settings = {"experiment": "executor_test", "rule": "usam"}
    tasks = block_tasks(ensemble_task, settings, chains=2500, block=1000, name="usam")
    assert [t.settings["chains"] for t in tasks] == [1000, 1000, 500]
    assert [t.settings["block"] for t in tasks] == [0, 1, 2]
    assert len({t.seed for t in tasks}) == 3 and tasks[2].label == "usam block 2"
    more = block_tasks(ensemble_task, settings, chains=4000, block=1000)
    assert [t.key for t in more[:2]] == [t.key for t in tasks[:2]]     # more chains add blocks


def test_pooled_block_moments_equal_the_moments_of_all_chains():
    settings = {"n": 6, "dim": 3, "data_seed": 1}
    problem = quadratic(settings)
    runs = [ensemble.run(problem, "usam", eta=0.1, rho=0.05, batch=2, x0=[1.0] * 3, steps=5,
                         chains=chains, seed=seed, every=None, keep_states=False,
                         test_fns=["loss"]) for chains, seed in ((7, 1), (12, 2))]
    pooled = pool_moments([run.moments["loss"] for run in runs])
    values = TEST_FUNCTIONS["loss"](problem, torch.cat([run.final for run in runs]))
    assert int(pooled.count[-1]) == 19
    assert torch.allclose(pooled.mean[-1], values.mean(), rtol=1e-12)
    assert torch.allclose(pooled.var[-1], values.var(), rtol=1e-12)
    from_json = pool_moments([json.loads(json.dumps(moments_json(run.moments["loss"])))
                              for run in runs])
    assert canonical_json(moments_json(from_json)) == canonical_json(moments_json(pooled))
    with pytest.raises(InputError, match="same steps"):
        pool_moments([runs[0].moments["loss"], Moments(torch.zeros(3), torch.zeros(3),
                                                       torch.ones(3, dtype=torch.long))])


def test_benchmark_table_gives_verdicts_only_with_intervals():
    from script_module import load_script

    bench = load_script("experiments/benchmarks/bench_parallel.py")

    def timings(rounds: int) -> list[dict]:
        rows = []
        for r in range(rounds):
            for way, wall in (("jobs 1", 10.0 + r), ("jobs 2", 5.0 + r / 4), ("dask", 5.2 + r / 4)):
                rows.append({"round": r, "way": way, "wall_s": wall, "load_1min": 0.5,
                             "task_wall_median_s": 5.0, "task_cpu_median_s": 5.0, "overhead": 0.02,
                             "cpu_share": 0.97, "cpu_overhead": None if way == "dask" else 0.03})
        return rows

    size = {"rounds": 6, "tasks": 4, "chains": 10, "steps": 10}
    text, ratios = bench.report(size, timings(6), True, 60.0)
    assert "jobs 1 / jobs 2" in text and "target >= 1.7: met" in text
    assert "target <= 1.1: met" in text and "bit-identical across every run: yes" in text
    assert [r["interval"] for r in ratios] == ["95% CI"] * 3
    text, _ = bench.report({**size, "rounds": 3}, timings(3), False, 30.0)
    assert "no verdict from so few rounds" in text and "min..max" in text
    assert "bit-identical across every run: NO" in text
    loaded = [{**row, "background_cores": 1.0, "load_1min": 2.5} for row in timings(6)]
    text, _ = bench.report(size, loaded, True, 60.0)
    assert "target >= 1.7: not resolvable: median background load 1.00 cores > 0.5" in text
    assert "met" not in text.replace("not resolvable", "")


def paths_task(settings: dict, seed: int) -> dict:
    """A task that reports the folder it was handed."""
    return {"seen": [{"folder": settings["folder"], "seed": seed}]}


def test_shared_seeds_pair_tasks_and_paths_stay_out_of_the_identity(tmp_path):
    base = {"experiment": "executor_test", "eta": 0.1}
    usam, sam = (Task(paths_task, {**base, "rule": rule}, 3, shared_seed_over=("rule",),
                      paths={"folder": str(tmp_path / "a")}) for rule in ("usam", "sam"))
    assert usam.seed == sam.seed and usam.key != sam.key
    other_eta = Task(paths_task, {**base, "rule": "usam", "eta": 0.2}, 3, shared_seed_over=("rule",))
    assert other_eta.seed != usam.seed
    assert Task(paths_task, {**base, "rule": "usam"}, 3).seed != usam.seed     # recorded: not shared
    assert usam.record_settings["seed_shared_over"] == ["rule"]
    moved = Task(paths_task, {**base, "rule": "usam"}, 3, shared_seed_over=("rule",),
                 paths={"folder": str(tmp_path / "b")})
    assert moved.key == usam.key and moved.seed == usam.seed
    with make_executor(jobs=2) as executor:
        records = run_tasks([usam, sam], executor, tmp_path / "records", progress=False)
    assert [r["results"]["seen"][0]["folder"] for r in records] == [str(tmp_path / "a")] * 2
    assert "folder" not in records[0]["settings"]
    assert records[0]["metadata"]["task"]["paths"] == {"folder": str(tmp_path / "a")}
    with pytest.raises(InputError, match="shared_seed_over"):
        Task(paths_task, base, shared_seed_over=("rule",))
    with pytest.raises(InputError, match="paths"):
        Task(paths_task, base, paths={"eta": "x"})


SCRIPT = '''
def work(settings, seed):
    return {"out": [{"twice": 2 * settings["x"], "module": __name__}]}
'''


def test_a_script_loaded_from_its_file_runs_in_spawned_workers(tmp_path):
    import importlib.util
    import sys

    path = tmp_path / "a_script.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("sdesam_experiment_a_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        tasks = [Task(module.work, {"experiment": "executor_test", "x": x}) for x in (1, 2)]
        with make_executor(jobs=2) as executor:
            records = run_tasks(tasks, executor, tmp_path / "records", progress=False)
    finally:
        del sys.modules[spec.name]
    assert [r["results"]["out"][0] for r in records] == [
        {"twice": 2, "module": "sdesam_experiment_a_script"},
        {"twice": 4, "module": "sdesam_experiment_a_script"}]
    assert os.getpid() not in {r["metadata"]["pid"] for r in records}


def test_run_sweep_starts_nothing_when_every_record_exists(tmp_path, capsys):
    import argparse

    from sdesam.experiment.executor import run_sweep
    from sdesam.experiment.tasks import exits_on_task_failure

    args = argparse.Namespace(jobs=2, scheduler=None, no_progress=True)
    tasks = [
        Task(slow_task, {"experiment": "executor_test", "sleep": 0.0, "eta": eta}) for eta in (1, 2)]
    first = run_sweep(tasks, argparse.Namespace(jobs=1, scheduler=None, no_progress=True), tmp_path)
    again = run_sweep(tasks, args, tmp_path)        # a pool would put other pids in the metadata
    assert results_of(again) == results_of(first)
    assert {r["metadata"]["pid"] for r in again} == {os.getpid()}

    @exits_on_task_failure("demo")
    def main() -> int:
        run_sweep([Task(failing_task, {"experiment": "executor_test", "eta": 3})],
                  argparse.Namespace(jobs=1, scheduler=None, no_progress=True), tmp_path)
        return 0

    assert main() == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: error: task ") and "boom at eta=3" in err and "\n" not in err
    with pytest.raises(InputError, match="exclude each other"):
        run_sweep(tasks, argparse.Namespace(jobs=2, scheduler="tcp://h:1"), tmp_path)


def global_rng_task(settings: dict, seed: int) -> dict:
    """A task that draws from the global generators, as library code without a generator does."""
    import random

    import numpy

    return {"draws": [{"torch": torch.rand(3).tolist(), "numpy": numpy.random.rand(2).tolist(),
                       "random": random.random()}]}


def test_the_global_generators_are_seeded_per_task_and_restored(tmp_path):
    tasks = [Task(global_rng_task, {"experiment": "executor_test", "k": k}) for k in range(2)]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with make_executor(jobs=1) as executor:
        here = run_tasks(tasks, executor, tmp_path / "here", progress=False)
    assert torch.equal(torch.rand(1), expected_next)            # the caller's stream untouched
    with make_executor(jobs=2) as executor:
        there = run_tasks(tasks, executor, tmp_path / "there", progress=False)
    assert results_of(here) == results_of(there)
    assert here[0]["results"] != here[1]["results"]
