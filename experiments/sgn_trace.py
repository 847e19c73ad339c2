"""tr V, the trace of the gradient-noise covariance, along training (this project's protocols).

* network-poor / network-init -- the digits MLP of :mod:`sdesam.experiment.digits`, continued from the
  poor minimum and trained from PyTorch's standard initialisation, with SGD, SAM, m-SAM over
  several m and RW-SAM (``sdesam.optim``), several seeds; tr V exact on the full clean training
  set at logged steps (mean and one standard error over seeds).
* landscape -- ensembles of SGD, USAM, m-USAM, SAM, m-SAM and RW-SAM started at the poor
  minimum of :class:`sdesam.problems.SharpFlatLandscape` (mean of tr V over chains, one
  standard error; every rule draws its batches from the same seed, so chain k of every rule
  sees the same batch indices -- the curves are not differenced chain by chain).

Also a table in the style of the paper's Table 6: tr V at the end of training per optimizer,
mean and standard deviation over seeds, and -- since every rule runs the same seeds (same
start, same batch order) -- the paired per-seed differences against SGD and SAM with t-based
95% intervals. Writes ``OUT/sgn_trace.json`` (the one record schema) and the figure.

A task is one landscape ensemble (a rule) or one network run (a start, a rule and a seed); tasks
run in parallel (``--jobs``, ``--scheduler``) and write ``OUT/tasks/<key>.json``, so an
interrupted run resumes where it stopped. A task's seed comes from its settings and ``--seed``
but not its rule (``shared_seed_over``): every rule sees the same batches (and, from the
standard initialisation, the same start) for a seed, which is what pairs them.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdesam.experiment import digits
from sdesam.simulation import ensemble, memory
from sdesam import sgn, stats
from sdesam.algorithms import get_rule
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
from sdesam.experiment.executor import add_executor_arguments, check_executor_arguments, sweep_runner
from sdesam.experiment.tasks import Task, exits_on_task_failure
from sdesam.experiment.headline import estimate, print_headline, rule_name
from sdesam.plotting import publish
from sdesam.problems import SharpFlatLandscape
from sdesam.experiment.records import make_record, merge_tables, timed_metadata

NETWORK = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 5],
           "steps_poor": 600, "steps_init": 1500, "log_every": 50, "seeds": 4, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"steps_poor": 50, "steps_init": 50, "seeds": 2, "micros": [1],
                 "log_every": 25}
LANDSCAPE = {"n": 32, "eta": 0.02, "batch": 16, "rho": 0.005, "chains": 1000, "steps": 3000,
             "log_every": 25, "micros": [1, 4], "sampling": "with-replacement"}
LANDSCAPE_QUICK = {"chains": 100, "steps": 100, "log_every": 10, "micros": [1]}
BASELINES = ("sgd", "sam")
"""The rules every other rule's final tr V is compared with, seed by seed."""
NETWORK_TASK_KEYS = ("lr", "batch", "rho", "delta", "log_every", "hidden", "gd_lr", "gd_steps",
                     "n_train", "n_random")
"""The network settings a run task depends on (besides its start, steps, rule and seed)."""
LANDSCAPE_TASK_KEYS = ("n", "eta", "batch", "rho", "chains", "steps", "log_every", "sampling")
"""The landscape settings an ensemble task depends on (not the list of m: more m add tasks)."""
RunTasks = Callable[[list[Task], str], list[dict[str, Any]]]
"""``run(tasks, description) -> records``: how a protocol has its tasks run."""


def network_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """tr V along one rule's run for one seed, from the digits poor minimum (read from the
    cache) or from the standard initialisation drawn from the seed: one task."""
    data, poor, start_record = digits.protocol_start(settings, cache_dir=settings["cache"],
                                                     device=settings["device"], progress=False)
    start = poor if settings["protocol"] == "network-poor" else \
        digits.make_model(settings["hidden"], seed=seed + 1).to(settings["device"])
    log = digits.continue_training(
        start, settings["rule"], data, lr=settings["lr"], batch=settings["batch"],
        steps=settings["steps"], seed=seed, log_every=settings["log_every"],
        micro=settings["micro"], rho=settings["rho"], lam=start_record["lam"],
        delta=settings["delta"])
    return {"log": [{"step": log["step"], "trace_V": log["trace_V"]}]}


def landscape_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Mean tr V over the chains of one rule's ensemble from the landscape's poor minimum,
    with its standard error, at every logged step: one task."""
    problem = SharpFlatLandscape(n=settings["n"])
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    rho_sam, lam = settings["rho"] * noise_scale, 1.0 / noise_scale
    rule, device = settings["rule"], settings["device"]
    result = ensemble.run(problem, rule, eta=settings["eta"],
                          rho=(rho_sam if get_rule(rule).normalized else settings["rho"])
                          if get_rule(rule).perturbed else None,
                          batch=settings["batch"], micro=settings["micro"],
                          x0=problem.poor_minimum.to(device), steps=settings["steps"],
                          chains=settings["chains"], seed=seed, sampling=settings["sampling"],
                          device=device, lam=lam if "lam" in get_rule(rule).keywords else None,
                          every=settings["log_every"])
    mean, stderr = sgn.trace_along_path(problem, result.states)
    return {"curves": [{"protocol": "landscape", "rule": rule, "micro": settings["micro"],
                        "step": result.steps.tolist(), "trace_V": mean.tolist(),
                        "trace_V_stderr": stderr.tolist(), "chains": settings["chains"],
                        "diverged": result.diverged_count}]}


def network_runs(settings: dict[str, Any], seed: int, device: str, cache: str | None,
                 progress: bool, run: RunTasks) -> dict[str, list[dict[str, Any]]]:
    """tr V curves and end-of-training values for every optimizer, from both starts: one task
    per start, rule and seed, run by ``run``."""
    cache = str(Path(cache if cache is not None else digits.default_cache_dir()).resolve())
    _, _, start_record = digits.protocol_start(settings, cache_dir=cache, device=device,
                                               progress=progress)    # computed once, then cached
    runs = [("sgd", None), *[("m-sam", m) for m in settings["micros"]], ("sam", None),
            ("rw-sam", None)]
    protocols = (("network-poor", settings["steps_poor"]), ("network-init", settings["steps_init"]))
    base = {"experiment": "sgn_trace", "device": device,
            **{key: settings[key] for key in NETWORK_TASK_KEYS}}
    # the same start and batch order for every rule at a seed: paired by seed
    tasks = [Task(network_task, {**base, "protocol": protocol, "steps": steps, "rule": rule,
                                 "micro": micro, "replicate": s}, seed,
                  name=f"{protocol} {rule} m={micro} seed {s}", shared_seed_over=("rule", "micro"),
                  paths={"cache": cache})
             for protocol, steps in protocols for rule, micro in runs
             for s in range(settings["seeds"])]
    logs = iter(record["results"]["log"][0] for record in run(tasks, "network tasks"))
    curves, final, per_seed = [], [], []
    for protocol, steps in protocols:
        for rule, micro in runs:
            traces = []
            for s in range(settings["seeds"]):
                log = next(logs)
                traces.append(log["trace_V"])
            label = {"protocol": protocol, "rule": rule, "micro": micro}
            traces = np.array(traces)                                        # [seeds, T]
            diverged = stats.non_finite_chains(traces, chain_axis=0)
            mean, stderr = stats.mean_and_stderr(traces, axis=0)
            curves.append({**label, "step": log["step"], "trace_V": mean.tolist(),
                           "trace_V_stderr": stderr.tolist(), "chains": len(traces),
                           "diverged": diverged})
            ends = traces[:, -1]
            final.append({**label, "trace_V": float(ends.mean()),
                          "trace_V_std": float(ends.std(ddof=1)) if len(ends) > 1 else 0.0,
                          "chains": len(ends), "diverged": diverged})
            per_seed += [{**label, "seed": seed + s, "trace_V": float(value)}
                         for s, value in enumerate(ends)]
    return {"curves": curves, "final": final, "final_seed": per_seed,
            "final_paired": stats.paired_table(per_seed, "trace_V", BASELINES, group=("protocol",)),
            "poor_minimum": [start_record]}


def landscape_runs(settings: dict[str, Any], seed: int, device: str,
                   run: RunTasks) -> dict[str, list[dict[str, Any]]]:
    """Mean tr V over chains along ensembles started at the landscape's poor minimum: one
    task per rule, run by ``run``, all with one seed (chain k of every rule sees the same
    batch indices)."""
    problem = SharpFlatLandscape(n=settings["n"])
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    rho_sam, lam = settings["rho"] * noise_scale, 1.0 / noise_scale
    runs = [("sgd", None), *[("m-usam", m) for m in settings["micros"]], ("usam", None),
            *[("m-sam", m) for m in settings["micros"]], ("sam", None), ("rw-sam", None)]
    base = {"experiment": "sgn_trace", "protocol": "landscape", "device": device,
            **{key: settings[key] for key in LANDSCAPE_TASK_KEYS}}
    tasks = [Task(landscape_task, {**base, "rule": rule, "micro": micro}, seed,
                  name=f"landscape {rule} m={micro}", shared_seed_over=("rule", "micro"))
             for rule, micro in runs]
    curves = [record["results"]["curves"][0] for record in run(tasks, "landscape tasks")]
    return {"curves": curves, "landscape_parameters": [{"rho_sam": rho_sam, "lam": lam}]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer chains, seeds and steps (the same experiment, "
                                        "under a minute of CPU time)")
    parser.add_argument("--protocol", choices=("landscape", "network", "all"), default="all")
    add_executor_arguments(parser)
    return parser.parse_args(argv)


def landscape_memory(settings: dict[str, Any]) -> list[memory.Part]:
    """What one landscape ensemble holds: the states at every logged step."""
    return ensemble.run_parts(SharpFlatLandscape(n=settings["n"]), batch=settings["batch"],
                              sampling=settings["sampling"], steps=settings["steps"],
                              chains=settings["chains"], every=settings["log_every"])


def headline_rows(results: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """tr V at the last step of every landscape rule (mean over chains ± standard error) and
    at the end of training of every network rule (mean ± std over seeds)."""
    rows = [(f"landscape {rule_name(curve)}",
             f"tr V at step {curve['step'][-1]}: "
             f"{estimate(curve['trace_V'][-1], curve['trace_V_stderr'][-1])}")
            for curve in results["curves"] if curve["protocol"] == "landscape"]
    rows += [(f"{row['protocol']} {rule_name(row)}",
              f"final tr V {estimate(row['trace_V'], row['trace_V_std'])} (± std, {row['chains']} seeds)")
             for row in results.get("final", [])]
    return rows


@exits_on_task_failure("sgn_trace")
def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
    where = check_executor_arguments(args)
    settings: dict[str, Any] = {"experiment": "sgn_trace", "protocol": args.protocol,
                                "quick": args.quick, "seed": args.seed, "device": args.device}
    if args.protocol in ("landscape", "all"):
        settings["landscape"] = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        memory.require(landscape_memory(settings["landscape"]), args.device)
    if args.protocol in ("network", "all"):
        settings["network"] = {**NETWORK, **(NETWORK_QUICK if args.quick else {})}
        digits.check_protocol_cache(settings["network"], args.cache)
    out = prepare_out(args, "sgn_trace")
    wall, cpu = time.perf_counter(), time.process_time()
    progress = not args.no_progress
    print(f"tasks run on {where}", flush=True)
    done: list[dict[str, Any]] = []
    with sweep_runner(args, out / "tasks") as run_batch:    # one executor for both protocols

        def run(tasks: list[Task], desc: str) -> list[dict[str, Any]]:
            done.extend(run_batch(tasks, desc))
            return done[-len(tasks):]

        parts = []
        if "landscape" in settings:
            parts.append(landscape_runs(settings["landscape"], args.seed, args.device, run))
        if "network" in settings:
            parts.append(network_runs(settings["network"], args.seed, args.device, args.cache,
                                      progress, run))
    metadata = {**timed_metadata(args.device, wall, cpu), "executor": where, "tasks": len(done),
                "tasks_cpu_time_s": sum(record["metadata"]["cpu_time_s"] for record in done)}
    record = make_record(settings, merge_tables(parts), metadata)
    for written in publish(record, out):
        print(written)
    print_headline("sgn_trace", headline_rows(record["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("sgn_trace", main))
