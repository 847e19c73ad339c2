"""Wall time of two sweeps in-process (--jobs 1), on a 2-process pool (--jobs 2) and on a
2-worker Dask cluster (--scheduler), timed in interleaved rounds.

The first sweep is weak-error-like: one task per (rule, eta) cell, each running the discrete
ensemble (:func:`sdesam.simulation.ensemble.run`) of ``--chains`` chains for ``--steps``
steps on the logistic-regression problem of ``sde_vs_discrete`` and returning its end moments
(seconds per task: see the table). Each round times every way of running it, in a rotated
order so that load from other processes spreads over them, each into a fresh records folder
(nothing is skipped). The second is the whole of ``experiments/generalization.py --quick`` (its
tuning chains and seed runs as tasks, its figure and data file after each cell), run the three
ways into a fresh ``--out`` and ``--runs-dir`` in each of ``--generalization-rounds`` rounds.
The pool's time includes starting its spawn workers, as every experiment run does; the Dask
``LocalCluster`` (``processes=True``, one thread per worker, reached by its TCP address as
``--scheduler`` would) is started once before the rounds and warmed by one small task, as a
long-lived cluster is.

The table gives, per way, the median wall time over rounds; the median wall and CPU time of a
task inside its worker; the overhead ``1 - (sum of the tasks' wall times) / (workers x wall)``
(pool start, dispatch, idle workers); the CPU share ``sum of the tasks' CPU times / (workers x
wall)`` (far below 100% where other processes take the cores: then the wall-time ratios say
more about the machine than about the executor); and the CPU overhead (CPU seconds of this
process and its pool workers over the tasks' own, minus one: what the executor costs, whatever
the load). Then each ratio of interest as the median of its per-round (paired) ratios with a
distribution-free 95% interval (:func:`sdesam.stats.median_interval`; fewer than 6 rounds give
min..max and no verdict), against issue 18's targets. The machine's load is given two ways:
the 1-minute load average before each timing (which counts this benchmark's own previous
timing too), and the background load -- the cores other processes kept busy during a
``BACKGROUND_WINDOW_S`` pause before each timing, read from ``/proc/stat`` less this process
tree's own CPU time. The targets are for an idle machine: a verdict needs a median background
load of at most ``MAX_BACKGROUND`` cores; above it the table says the verdict is not
resolvable, and names the load. Every run's result records are checked
bit-identical (a trainer run's own timings left out).

Writes ``OUT/bench_parallel.txt`` and ``OUT/bench_parallel.json``; OUT is a fresh
``runs/bench_parallel-<time>/`` unless ``--out`` names one.
usage: python experiments/benchmarks/bench_parallel.py [--quick] [--rounds 6]
       [--generalization-rounds 3] [--sweeps weak-error generalization] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sdesam import validation
from sdesam.cli import OneLineParser, guarded
from sdesam.experiment.executor import make_executor
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import (atomic_write, make_record, run_metadata, without_fields,
                                      write_json)
from sdesam.experiment.tasks import Task, moments_json, run_tasks
from sdesam.cli import load_experiment
from sdesam.problems import LogisticRegression
from sdesam.simulation import ensemble
from sdesam.stats import median_interval

DEFAULT = {"rounds": 6, "tasks": 8, "chains": 4000, "steps": 1000, "generalization_rounds": 3}
QUICK = {"rounds": 3, "tasks": 4, "chains": 2000, "steps": 1000, "generalization_rounds": 1}
SWEEPS = ("weak-error", "generalization")
MAX_BACKGROUND = 0.5
"""The median background load (cores kept busy by other processes) above which no verdict is
given: issue 18's targets are for an idle machine, and on 2 cores half a core taken by others
already moves the ratios more than the executor does."""
BACKGROUND_WINDOW_S = 2.0
"""The pause before each timing in which the background load is read."""
TIMINGS = ("wall_seconds", "train_seconds")
"""A trainer run's own timings, left out of the bit-identity check."""
RULES = ("usam", "sam")
ETAS = (0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125)
TEST_FNS = ["loss", "sq_norm", "trace_V"]
WAYS = ("jobs 1", "jobs 2", "dask")
TARGETS = {"jobs 1 / jobs 2": (">=", 1.7), "dask / jobs 2": ("<=", 1.1)}


def weak_error_cell(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """End moments of the ensemble of one (rule, eta) cell: one task of the sweep."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    labels = (torch.rand(8, generator=generator, dtype=torch.float64) < 0.5).double()
    problem = LogisticRegression(features, labels, l2=0.1)
    run = ensemble.run(problem, settings["rule"], eta=settings["eta"], rho=settings["rho"],
                       batch=4, x0=[1.0, -1.0], steps=settings["steps"],
                       chains=settings["chains"], seed=seed, every=None, keep_states=False,
                       test_fns=TEST_FNS)
    return {"moments": [{"test_fn": name, **moments_json(run.moments[name])} for name in TEST_FNS]}


def sweep(size: dict[str, int]) -> list[Task]:
    """The sweep's tasks: ``size['tasks']`` (rule, eta) cells."""
    cells = [(rule, eta) for eta in ETAS for rule in RULES][:size["tasks"]]
    return [Task(weak_error_cell, {"experiment": "bench_parallel", "rule": rule, "eta": eta,
                                   "rho": 0.5 * eta ** 0.5, "chains": size["chains"],
                                   "steps": size["steps"]}, name=f"{rule} eta={eta:g}")
            for rule, eta in cells]


def executor_flags(way: str, address: str) -> dict[str, Any]:
    """The make_executor arguments of a way of running."""
    return {"scheduler": address} if way == "dask" else {"jobs": 1 if way == "jobs 1" else 2}


def time_way(way: str, tasks: list[Task], folder: Path, address: str) -> dict[str, Any]:
    """Run the weak-error sweep one way into ``folder``: wall time, the tasks' own times, load."""
    def run() -> list[dict[str, Any]]:
        with make_executor(**executor_flags(way, address)) as executor:
            return run_tasks(tasks, executor, folder, progress=False)
    return timed(way, run)


def time_generalization(way: str, folder: Path, address: str,
                        script: Any) -> dict[str, Any]:
    """Run ``generalization.py --quick`` one way into ``folder`` (fresh --out and --runs-dir):
    wall time, its tasks' own times, load."""
    flags = (["--scheduler", address] if way == "dask" else
             ["--jobs", "1" if way == "jobs 1" else "2"])

    def run() -> list[dict[str, Any]]:
        with contextlib.redirect_stdout(io.StringIO()):
            status = script.main(["--quick", "--out", str(folder), "--runs-dir",
                                  str(folder / "runs"), "--no-progress", *flags])
        if status != 0:
            raise RuntimeError(f"generalization --quick {' '.join(flags)} exited {status}")
        return [json.loads(path.read_text())
                for path in sorted((folder / "runs" / "tasks").glob("*.json"))]
    return timed(way, run)


def timed(way: str, run: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """Time ``run() -> task records`` after reading the background load: wall, the tasks'
    own wall and CPU times, the CPU of this process tree, loads, and the results (JSON)."""
    background = background_load()
    load = os.getloadavg()[0]
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    start = time.perf_counter()
    records = run()
    wall = time.perf_counter() - start
    own = own_cpu_seconds() - own_before
    others = max(0.0, (machine_busy_seconds() - busy_before - own) / wall)
    task_walls = [r["metadata"]["wall_time_s"] for r in records]
    task_cpus = [r["metadata"]["cpu_time_s"] for r in records]
    workers = 1 if way == "jobs 1" else 2
    return {"way": way, "wall_s": wall, "load_1min": load, "background_cores": background,
            "others_cores_during": others, "tasks": len(records),
            "task_wall_sum_s": sum(task_walls),
            "task_wall_median_s": statistics.median(task_walls),
            "task_cpu_median_s": statistics.median(task_cpus),
            "overhead": 1 - sum(task_walls) / (workers * wall),
            "cpu_share": sum(task_cpus) / (workers * wall),
            "cpu_overhead": own / sum(task_cpus) - 1,
            "hosts_pids": sorted({(r["metadata"]["host"], r["metadata"]["pid"]) for r in records}),
            "results": json.dumps(without_fields([r["results"] for r in records], TIMINGS), sort_keys=True)}



def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]      # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live descendants (pool
    workers, the Dask cluster's worker processes)."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    family, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - family
        family |= frontier
    return total + sum(times[pid] for pid in family)


def background_load(window: float = BACKGROUND_WINDOW_S) -> float:
    """The cores other processes kept busy during a pause of ``window`` seconds."""
    busy, own = machine_busy_seconds(), own_cpu_seconds()
    time.sleep(window)
    return max(0.0, (machine_busy_seconds() - busy - (own_cpu_seconds() - own)) / window)


def spread(values: list[float]) -> tuple[float, float, float, str]:
    """Median and a 95% interval (or min..max when too few values), and which it is."""
    try:
        return (*median_interval(values), "95% CI")
    except ValueError:
        return statistics.median(values), min(values), max(values), "min..max"


def report(size: dict[str, int], timings: list[dict[str, Any]], identical: bool,
           elapsed: float, *, sweep: str = "weak-error") -> tuple[str, list[dict[str, Any]]]:
    """The table of one sweep as text, and its paired ratios as records."""
    by = {way: [t for t in timings if t["way"] == way] for way in WAYS}
    rounds = len(by["jobs 1"])
    what = (f"{size['tasks']} tasks (rules {', '.join(RULES)} x eta), {size['chains']} chains x "
            f"{size['steps']} steps each" if sweep == "weak-error" else
            f"experiments/generalization.py --quick ({timings[0].get('tasks', '?')} tasks)")
    backgrounds = [t.get("background_cores", t["load_1min"]) for t in timings]
    loaded = statistics.median(backgrounds) > MAX_BACKGROUND
    lines = [f"bench_parallel {sweep}: {what}, {rounds} interleaved rounds; "
             f"{os.cpu_count()} CPUs; total {elapsed:.0f} s", "",
             f"{'way':<8} {'wall s':>8} {'min..max':>13} {'task wall s':>12} {'task CPU s':>11} "
             f"{'overhead':>9} {'CPU share':>10} {'CPU overhead':>13} {'load 1-min':>12} "
             f"{'background':>12} {'others during':>14}"]
    for way, rows in by.items():
        walls = [t["wall_s"] for t in rows]
        loads = [t["load_1min"] for t in rows]
        cpu_overheads = [t["cpu_overhead"] for t in rows if t["cpu_overhead"] is not None]
        cpu_overhead = f"{statistics.median(cpu_overheads):.1%}" if cpu_overheads else "n/a"
        lines.append(f"{way:<8} {statistics.median(walls):>8.2f} "
                     f"{min(walls):>6.2f}..{max(walls):<5.2f} "
                     f"{statistics.median(t['task_wall_median_s'] for t in rows):>12.2f} "
                     f"{statistics.median(t['task_cpu_median_s'] for t in rows):>11.2f} "
                     f"{statistics.median(t['overhead'] for t in rows):>9.1%} "
                     f"{statistics.median(t['cpu_share'] for t in rows):>10.1%} "
                     f"{cpu_overhead:>13} "
                     f"{min(loads):>5.2f}..{max(loads):<5.2f} "
                     f"{range_text([t.get('background_cores') for t in rows]):>12} "
                     f"{range_text([t.get('others_cores_during') for t in rows]):>14}")
    lines += ["", f"{'paired ratio':<18} {'median':>7}  interval"]
    ratios = []
    for name, (top, bottom) in {"jobs 1 / jobs 2": ("jobs 1", "jobs 2"),
                                "jobs 1 / dask": ("jobs 1", "dask"),
                                "dask / jobs 2": ("dask", "jobs 2")}.items():
        values = [a["wall_s"] / b["wall_s"] for a, b in zip(by[top], by[bottom])]
        median, low, high, kind = spread(values)
        verdict = ""
        if name in TARGETS:
            sign, bound = TARGETS[name]
            met = low >= bound if sign == ">=" else high <= bound
            missed = high < bound if sign == ">=" else low > bound
            verdict = f"  target {sign} {bound}: " + (
                "no verdict from so few rounds" if kind != "95% CI" else
                f"not resolvable: median background load {statistics.median(backgrounds):.2f} "
                f"cores > {MAX_BACKGROUND} (1-min load {min(t['load_1min'] for t in timings):.2f}"
                f"..{max(t['load_1min'] for t in timings):.2f})" if loaded else
                "met" if met else "not met" if missed else "not resolvable at this noise")
        lines.append(f"{name:<18} {median:>7.3f}  [{low:.3f}, {high:.3f}] {kind}{verdict}")
        ratios.append({"ratio": name, "median": median, "low": low, "high": high,
                       "interval": kind, "rounds": len(values)})
    lines += ["", f"result records bit-identical across every run: {'yes' if identical else 'NO'}",
              "medians over rounds; task wall / CPU s: median per task inside its worker; "
              "overhead: 1 - sum(task wall) / (workers x wall); CPU share: sum(task CPU) / "
              "(workers x wall), below 100% where other processes take the cores; CPU overhead: "
              "CPU of this process tree (pool or Dask workers included) over sum(task CPU), minus "
              "1; load 1-min: the machine's 1-minute load average before each timing (this "
              "benchmark's previous timing included); background: cores busy with other "
              f"processes in a {BACKGROUND_WINDOW_S:g} s pause before each timing; others "
              "during: cores other processes took during the timing (min..max)",
              "pool times include starting its 2 spawn workers; the Dask LocalCluster was "
              "started once, untimed, and warmed by one small task"]
    return "\n".join(lines) + "\n", ratios


def range_text(values: list[float | None]) -> str:
    """``min..max`` of the values given, or n/a."""
    known = [v for v in values if v is not None]
    return f"{min(known):.2f}..{max(known):.2f}" if known else "n/a"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the benchmark."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes, about two minutes ({QUICK})")
    for name in DEFAULT:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                            help=f"override (default {DEFAULT[name]}, quick {QUICK[name]})")
    parser.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(SWEEPS),
                        help="the sweeps to time (default: both)")
    parser.add_argument("--out", default=None,
                        help="folder for the table (default: a fresh runs/bench_parallel-*)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Time the sweeps every way in interleaved rounds; print and write the tables."""
    args = parse_args(argv)
    size = {**(QUICK if args.quick else DEFAULT),
            **{name: validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
               for name in DEFAULT if getattr(args, name) is not None}}
    if size["tasks"] > len(RULES) * len(ETAS):
        raise validation.InputError(f"--tasks must be at most {len(RULES) * len(ETAS)}; "
                                    f"got {size['tasks']}")
    out = check_writable(resolve_out(args.out, "bench_parallel"))
    print(f"bench_parallel: writing to {out}/", file=sys.stderr, flush=True)
    from distributed import LocalCluster

    tasks = sweep(size)
    generalization = load_experiment("generalization") if "generalization" in args.sweeps else None
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name in args.sweeps}
    rounds = {"weak-error": size["rounds"], "generalization": size["generalization_rounds"]}
    start, wall = time.process_time(), time.perf_counter()
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        with make_executor(scheduler=address) as executor:     # warm-up
            run_tasks(sweep({**size, "tasks": 2, "chains": 10, "steps": 2}), executor,
                      out / "records" / "warm-up", progress=False)
        for round_index in range(max(rounds[name] for name in args.sweeps)):
            for name in args.sweeps:
                if round_index >= rounds[name]:
                    continue
                for k in range(len(WAYS)):
                    way = WAYS[(k + round_index) % len(WAYS)]
                    folder = out / "records" / name / f"round{round_index}-{way.replace(' ', '')}"
                    timing = (time_way(way, tasks, folder, address) if name == "weak-error" else
                              time_generalization(way, folder, address, generalization))
                    timings[name].append({"round": round_index, **timing})
                    print(f"{name} round {round_index + 1}/{rounds[name]} {way}: "
                          f"{timing['wall_s']:.2f} s (load {timing['load_1min']:.2f}, background "
                          f"{timing['background_cores']:.2f}, others during "
                          f"{timing['others_cores_during']:.2f})", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - wall
    texts, ratios, identical = [], {}, {}
    for name, rows in timings.items():
        identical[name] = len({t["results"] for t in rows}) == 1
        text, ratios[name] = report(size, rows, identical[name],
                                    sum(t["wall_s"] + BACKGROUND_WINDOW_S for t in rows), sweep=name)
        texts.append(text)
    text = "\n".join(texts) + f"\ntotal {elapsed:.0f} s\n"
    metadata = {**run_metadata(), "wall_time_s": elapsed, "cpu_time_s": time.process_time() - start}
    rows = {name: [{k: v for k, v in t.items() if k not in ("results", "hosts_pids")} for t in rows]
            for name, rows in timings.items()}
    write_json(out / "bench_parallel.json",
               make_record({"experiment": "bench_parallel", **size, "sweeps": args.sweeps},
                           {"timings": [{"sweep": name, **row} for name in rows for row in rows[name]],
                            "ratios": [{"sweep": name, **row} for name in ratios
                                       for row in ratios[name]],
                            "identical": [{"sweep": name, "identical": value}
                                          for name, value in identical.items()]}, metadata))
    atomic_write(out / "bench_parallel.txt", lambda handle: handle.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("bench_parallel", lambda: main()))
