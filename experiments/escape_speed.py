"""Speed of escape from a poor, sharp minimum for SGD and the SAM family (this project's protocols).

Two protocols (``--protocol landscape|network|all``):

* landscape -- K chains start at the sharp, noisy minimum of
  :class:`sdesam.problems.SharpFlatLandscape`; discrete ensembles of SGD, USAM, m-USAM (m in
  ``micros``, default 1, 2, 4, ..., B), SAM, m-SAM and RW-SAM, and the SDEs of SGD and the USAM family, all with the
  same step size and batch (the SDEs, costlier per step, with fewer chains and a subset of m,
  integrated with dt = ``sde_dt_fraction`` * eta, default eta/4: Euler with dt = eta adds an
  O(eta) error of the size of the differences compared). Recorded: the fraction of chains
  past the saddle against steps (Wilson bands), the restricted mean first-exit time
  E[min(tau, T)] with bootstrap bands, the chains that left the poor well to the left
  (``left_exit``), the stable points of each rule's mean drift (``stable_points``) and, since
  every rule shares its random numbers chain by chain, paired per-chain differences of the
  restricted exit time against SGD and SAM (``landscape_exit_paired``).
* network -- an MLP on scikit-learn's digits, driven to a poor minimum by full-batch GD on the
  clean training set plus a random-label block (:mod:`sdesam.experiment.digits`), then continued on the
  clean set by SGD, SAM, m-SAM over several m and RW-SAM (``sdesam.optim``), several seeds each.
  "Escape" is the first logged step at which test accuracy exceeds its value at the poor
  minimum by ``threshold``. Every rule runs the same seeds (same start, same batch order), so
  exit steps are also compared seed by seed (paired differences against SGD and SAM).

A task is one rule's ensemble (landscape: a discrete rule or an SDE, with its exit times; the
stable points of a rule's mean drift) or one network run (a rule and a seed). Tasks run in
parallel (``--jobs``, ``--scheduler``) and write ``OUT/tasks/<key>.json``, so an interrupted run
resumes where it stopped. A task's seed comes from its settings and ``--seed`` but not its rule
(``shared_seed_over``), which is what pairs the rules chain by chain and seed by seed.

Writes ``OUT/escape_speed.json`` (the one record schema) and ``OUT/escape_speed.png|pdf``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdesam.experiment import digits
from sdesam.simulation import ensemble, memory, sde
from sdesam import stats
from sdesam.algorithms import get_rule, sampling_factor
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
from sdesam.experiment.executor import add_executor_arguments, check_executor_arguments, sweep_runner
from sdesam.experiment.tasks import Task, exits_on_task_failure
from sdesam.experiment.headline import interval, print_headline, rule_name
from sdesam.plotting import publish
from sdesam.problems import SharpFlatLandscape
from sdesam.experiment.records import make_record, merge_tables, timed_metadata

LANDSCAPE = {"n": 32, "eta": 0.02, "batch": 16, "rho": 0.005, "chains": 1000, "sde_chains": 500,
             "micros": [1, 2, 4, 8, 16], "sde_micros": [1, 2, 4], "steps": 3000, "log_every": 20,
             "sampling": "with-replacement", "sde_dt_fraction": 0.25, "drift_draws": 1000}
LANDSCAPE_QUICK = {"chains": 100, "sde_chains": 50, "steps": 100, "log_every": 10,
                   "micros": [1, 16], "sde_micros": [1], "drift_draws": 100}
NETWORK = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 5, 10],
           "steps": 600, "log_every": 25, "seeds": 6, "threshold": 0.02, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"steps": 50, "seeds": 2, "micros": [1], "log_every": 10}
BASELINES = ("sgd", "sam")
"""The rules every other rule's exit time is compared with, seed by seed (network) or chain by
chain (landscape)."""
LEFT_EDGE_WIDTHS = 3
"""A landscape chain that never passes the saddle and ends left of the poor well's centre
minus this many well widths (x < -0.6) has left the poor well to the LEFT: m-SAM's drift at
small m has a stable point there (near x = -0.7) that f lacks; such chains are counted as
``left_exit`` (and, having not escaped, at the horizon in the restricted exit time)."""
STABLE_GRID = 461
"""Grid points on [-2, 2.6] (spacing 0.01) where the rules' mean drifts are evaluated."""
STABLE_MATCH = 0.1
"""A stable point of a rule's drift within this distance of a minimum of f is that minimum."""
PER_CHAIN_RECORD_BYTES = 512
"""Memory of one chain's paired exit record (a dict of five entries) while the tables are built."""
LANDSCAPE_TASK_KEYS = ("n", "eta", "batch", "rho", "steps", "log_every", "sampling",
                       "sde_dt_fraction")
"""The landscape settings a run task depends on (not the lists of rules: more rules add tasks)."""
NETWORK_TASK_KEYS = ("lr", "batch", "rho", "delta", "steps", "log_every", "hidden", "gd_lr",
                     "gd_steps", "n_train", "n_random")
"""The network settings a run task depends on."""
RunTasks = Callable[[list[Task], str], list[dict[str, Any]]]
"""``run(tasks, description) -> records``: how a protocol has its tasks run."""


def micro_sizes(batch: int) -> list[int]:
    """1, 2, 4, ..., batch: the micro-batch sizes of the landscape protocol."""
    return [2**k for k in range(int(math.log2(batch)) + 1)]


def usam_member(micro: int, batch: int) -> tuple[str, int | None]:
    """The USAM-family rule with micro-batch ``micro``: m-USAM, or USAM itself at m = B."""
    return ("usam", None) if micro == batch else ("m-usam", micro)


def sam_member(micro: int, batch: int) -> tuple[str, int | None]:
    """The SAM-family rule with micro-batch ``micro``: m-SAM, or SAM itself at m = B."""
    return ("sam", None) if micro == batch else ("m-sam", micro)


def landscape_scales(problem: SharpFlatLandscape, rho: float) -> tuple[float, float]:
    """(SAM's radius, RW-SAM's lam): SAM's radius is the size of m = 1 USAM's perturbation at
    the poor minimum; RW-SAM's lam makes lam |g_i| of order one there."""
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    return rho * noise_scale, 1.0 / noise_scale


def landscape_run_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """One rule's ensemble (discrete or SDE) from the poor minimum: its escaped-fraction curve,
    its exit-time summary and every chain's restricted exit step (NaN: diverged). One task."""
    problem = SharpFlatLandscape(n=settings["n"])
    eta, steps, rule, kind = settings["eta"], settings["steps"], settings["rule"], settings["kind"]
    rho_sam, lam = landscape_scales(problem, settings["rho"])
    left_edge = problem.sharp[0] - LEFT_EDGE_WIDTHS * problem.sharp[2]
    options = dict(eta=eta, rho=(rho_sam if get_rule(rule).normalized else settings["rho"])
                   if get_rule(rule).perturbed else None,
                   batch=settings["batch"], micro=settings["micro"],
                   x0=problem.poor_minimum.to(settings["device"]), chains=settings["chains"],
                   seed=seed, sampling=settings["sampling"], device=settings["device"])
    if kind == "discrete":
        rule_lam = lam if "lam" in get_rule(rule).keywords else None
        result = ensemble.run(problem, rule, steps=steps, lam=rule_lam, **options)
        step_of = np.arange(steps + 1)
    else:
        result = sde.simulate(problem, rule, horizon=steps * eta,
                              dt=eta * settings["sde_dt_fraction"], **options)
        step_of = np.rint(np.asarray(result.times.cpu()) / eta).astype(int)   # time -> step
    path = result.states.cpu().numpy()
    diverged = result.diverged.cpu().numpy()
    exit_index = stats.first_exit(path, problem.escaped)
    exit_steps = np.where(exit_index == stats.NEVER, stats.NEVER, step_of[exit_index])
    left = left_exits(exit_steps, path[-1], diverged, left_edge)
    label = {"protocol": "landscape", "rule": rule, "micro": settings["micro"], "kind": kind}
    grid = np.arange(0, steps + 1, settings["log_every"])
    band = stats.escaped_fraction(exit_steps, grid)
    restricted = np.where(exit_steps == stats.NEVER, steps, exit_steps).astype(float)
    return {"curves": [{**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                        "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()}],
            "exit_time": [{**label, **stats.exit_time_summary(exit_steps, steps, seed=seed),
                           "diverged": int(diverged.sum()), "left_exit": int(left.sum()),
                           "left_exit_fraction": float(left.mean())}],
            "per_chain": [{"restricted_exit_step": np.where(diverged, np.nan, restricted).tolist()}]}


def stable_point_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The stable points of one discrete rule's mean drift on [-2, 2.6] against those of f (the
    poor and good minima): a point farther than ``STABLE_MATCH`` from both is spurious (for
    m-SAM at small m one appears left of the poor well: see ``left_exit``). One task."""
    problem = SharpFlatLandscape(n=settings["n"])
    rho_sam, lam = landscape_scales(problem, settings["rho"])
    x = torch.linspace(-2.0, 2.6, STABLE_GRID, dtype=torch.float64).unsqueeze(-1)
    minima = (problem.poor_minimum.item(), problem.good_minimum.item())
    rule, micro = settings["rule"], settings["micro"]
    zeros = stable_zeros(x, mean_direction(
        problem, rule, x, rho=rho_sam if get_rule(rule).normalized else settings["rho"],
        batch=settings["batch"], micro=micro, lam=lam if "lam" in get_rule(rule).keywords else None,
        draws=settings["drift_draws"], seed=seed))
    spurious = [z for z in zeros if min(abs(z - m) for m in minima) > STABLE_MATCH]
    return {"stable_points": [{"rule": rule, "micro": micro, "stable_points": zeros,
                               "spurious_stable_points": spurious, "spurious": len(spurious)}]}


def landscape_protocol(settings: dict[str, Any], seed: int, device: str,
                       run: RunTasks) -> dict[str, list[dict[str, Any]]]:
    """Discrete ensembles and SDEs from the poor minimum of the sharp/flat landscape, one task
    per rule and kind (and per rule for the stable points of its drift), run by ``run``.

    Paired: every discrete rule's task has the same seed (its seed is shared over the rule),
    so it draws the same batches (every rule uses the batch size B and the same sampling, so
    chain k of every rule sees the same batch indices at every step), and every SDE the same
    Brownian path for chain k; the restricted exit times are differenced chain by chain against
    SGD and SAM (discrete) and against the SGD SDE. Not paired: discrete against SDE (different
    seeds, different chain counts), and the step at which two rules' paths part (the same
    batches give different iterates).
    """
    problem = SharpFlatLandscape(n=settings["n"])
    batch, micros = settings["batch"], settings["micros"]
    rho_sam, lam = landscape_scales(problem, settings["rho"])
    left_edge = problem.sharp[0] - LEFT_EDGE_WIDTHS * problem.sharp[2]
    members = [("sgd", None), *[usam_member(m, batch) for m in micros],
               *[sam_member(m, batch) for m in micros], ("rw-sam", None)]
    runs = [(rule, micro, "discrete") for rule, micro in members]
    runs += [("sgd", None, "sde")]
    runs += [(*usam_member(m, batch), "sde") for m in [*settings["sde_micros"], batch]]
    base = {"experiment": "escape_speed", "protocol": "landscape", "device": device,
            **{key: settings[key] for key in LANDSCAPE_TASK_KEYS}}
    tasks = [Task(landscape_run_task, {**base, "rule": rule, "micro": micro, "kind": kind,
                                       "chains": settings["chains" if kind == "discrete" else "sde_chains"]},
                  seed, name=f"landscape {kind} {rule} m={micro}", shared_seed_over=("rule", "micro"))
             for rule, micro, kind in runs]
    stable = {"experiment": "escape_speed", "protocol": "landscape-drift", "n": settings["n"],
              "batch": batch, "rho": settings["rho"], "drift_draws": settings["drift_draws"]}
    tasks += [Task(stable_point_task, {**stable, "rule": rule, "micro": micro}, seed,
                   name=f"stable points {rule} m={micro}", shared_seed_over=("rule", "micro"))
              for rule, micro in members]
    records = [record["results"] for record in run(tasks, "landscape tasks")]
    curves, exits, per_chain, points = [], [], [], []
    for (rule, micro, kind), results in zip(runs, records):
        curves += results["curves"]
        exits += results["exit_time"]
        per_chain += [{"kind": kind, "rule": rule, "micro": micro, "chain": k,
                       "restricted_exit_step": value}
                      for k, value in enumerate(results["per_chain"][0]["restricted_exit_step"])]
    for results in records[len(runs):]:
        points += results["stable_points"]
    paired = stats.paired_table(per_chain, "restricted_exit_step", BASELINES, group=("kind",),
                                unit="chain")
    for row in paired:       # one row per pair of rules; the per-chain lists stay in memory
        del row["chains"], row["differences"]
        row["protocol"] = "landscape"
    parameters = {"rho_sam": rho_sam, "lam": lam, "saddle": problem.saddle,
                  "poor": problem.poor_minimum.item(), "good": problem.good_minimum.item(),
                  "left_edge": left_edge}
    return {"curves": curves, "exit_time": exits, "landscape_exit_paired": paired,
            "landscape_parameters": [parameters], "stable_points": points,
            **landscape_picture(problem, settings)}


def left_exits(exit_steps: np.ndarray, final: np.ndarray, diverged: np.ndarray,
               left_edge: float) -> np.ndarray:
    """Chains ``[K]`` that left the poor well to the left: never past the saddle
    (``exit_steps`` NEVER), not diverged, and left of ``left_edge`` at the end (``final [K, 1]``)."""
    return (np.asarray(exit_steps) == stats.NEVER) & (np.asarray(final)[:, 0] < left_edge) \
        & ~np.asarray(diverged, dtype=bool)


def mean_direction(problem: SharpFlatLandscape, rule: str, x: torch.Tensor, *, rho: float,
                   batch: int, micro: int | None, lam: float | None, draws: int,
                   seed: int) -> torch.Tensor:
    """The mean update direction E[G(x)] of ``rule`` at grid points ``x [G, 1]`` over ``draws``
    batches (with replacement), the same batches at every point (so the estimate is a smooth
    function of x whose zeros are stable under refinement of the grid): ``[G]``.

    -E[G] is the drift of the rule to first order in eta, to all orders in rho (for SAM-type
    rules ``-grad(f + rho E|grad f_S|)`` at first order in rho)."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, problem.n, (draws, batch), generator=generator)
    rule_lam = ensemble.rule_lam(get_rule(rule), lam)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for block in torch.split(indices, 256):
        points = x.unsqueeze(0).expand(block.shape[0], *x.shape)
        batches = block.unsqueeze(1).expand(block.shape[0], x.shape[0], batch)
        total += ensemble.update_direction(problem, get_rule(rule), points, batches, rho=rho,
                                           micro=micro or batch, lam=rule_lam)[..., 0].sum(0)
    return total / draws


def stable_zeros(x: torch.Tensor, direction: torch.Tensor) -> list[float]:
    """Grid points where the drift -direction crosses zero from positive to negative (stable
    fixed points of the mean dynamics), linearly interpolated."""
    d = direction
    where = torch.nonzero((d[:-1] < 0) & (d[1:] >= 0)).flatten().tolist()
    u = x[:, 0]
    return [float(u[i] - d[i] * (u[i + 1] - u[i]) / (d[i + 1] - d[i])) for i in where]


def landscape_picture(problem: SharpFlatLandscape,
                      settings: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """f and tr V on a grid, and each rule's effective potential with the barrier of its well
    (SGD: f itself; m-USAM: f + rho/2 |f'|^2 + rho c(m)/2 tr V)."""
    x = torch.linspace(-0.8, 2.6, 500, dtype=torch.float64).unsqueeze(-1)
    loss = problem.loss(x).tolist()
    potentials = [{"rule": "sgd", "micro": None, "potential": loss, "barrier": problem.barrier()}]
    for m in micro_sizes(settings["batch"]):
        c = float(sampling_factor(m, problem.n, settings["sampling"]))
        rule, micro = usam_member(m, settings["batch"])
        potentials.append({"rule": rule, "micro": micro,
                           "potential": problem.effective_potential(x, settings["rho"], c).tolist(),
                           "barrier": problem.barrier(settings["rho"], c)})
    landscape = {"x": x[:, 0].tolist(), "loss": loss, "trace_V": problem.trace_V(x).tolist()}
    return {"landscape": [landscape], "potentials": potentials}


def network_run_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """One rule continued from the digits poor minimum (read from the cache) for one seed: its
    log of test accuracy, clean training loss, tr V and distance. One task."""
    data, start, poor = digits.protocol_start(settings, cache_dir=settings["cache"],
                                              device=settings["device"], progress=False)
    log = digits.continue_training(
        start, settings["rule"], data, lr=settings["lr"], batch=settings["batch"],
        steps=settings["steps"], seed=seed, log_every=settings["log_every"],
        micro=settings["micro"], rho=settings["rho"], lam=poor["lam"], delta=settings["delta"])
    return {"log": [{key: log[key] for key in ("step", "test_accuracy", "clean_train_loss",
                                               "trace_V", "distance")}]}


def network_protocol(settings: dict[str, Any], seed: int, device: str, cache: str | None,
                     progress: bool, run: RunTasks) -> dict[str, list[dict[str, Any]]]:
    """Continue from the digits poor minimum with each optimizer over several seeds: one task
    per rule and seed, run by ``run``; the k-th seed's task of every rule has the same seed
    (the same batch order), so exit steps pair by seed."""
    cache = str(Path(cache if cache is not None else digits.default_cache_dir()).resolve())
    _, _, poor = digits.protocol_start(settings, cache_dir=cache, device=device,
                                       progress=progress)      # computed once, then cached
    runs = [("sgd", None), *[sam_member(m, settings["batch"]) for m in settings["micros"]],
            ("sam", None), ("rw-sam", None)]
    base = {"experiment": "escape_speed", "protocol": "network", "device": device,
            **{key: settings[key] for key in NETWORK_TASK_KEYS}}
    tasks = [Task(network_run_task, {**base, "rule": rule, "micro": micro, "replicate": s}, seed,
                  name=f"network {rule} m={micro} seed {s}", shared_seed_over=("rule", "micro"),
                  paths={"cache": cache})
             for rule, micro in runs for s in range(settings["seeds"])]
    all_logs = [record["results"]["log"][0] for record in run(tasks, "network tasks")]
    curves, exits, metrics, per_seed = [], [], [], []
    for index, (rule, micro) in enumerate(runs):
        logs = all_logs[index * settings["seeds"]:(index + 1) * settings["seeds"]]
        label = {"protocol": "network", "rule": rule, "micro": micro, "kind": "discrete"}
        grid = np.asarray(logs[0]["step"])
        accuracy = np.array([log["test_accuracy"] for log in logs]).T        # [T, seeds]
        diverged = stats.non_finite_chains(np.array([log["clean_train_loss"] for log in logs]), 0)
        exit_index = stats.first_rise(accuracy, settings["threshold"])
        exit_steps = np.where(exit_index == stats.NEVER, stats.NEVER, grid[exit_index])
        band = stats.escaped_fraction(exit_steps, grid)
        curves.append({**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                       "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()})
        exits.append({**label, **stats.exit_time_summary(exit_steps, settings["steps"], seed=seed),
                      "diverged": diverged})
        per_seed += [{"rule": rule, "micro": micro, "seed": seed + s,
                      "exit_step": None if step == stats.NEVER else int(step),
                      "restricted_exit_step": settings["steps"] if step == stats.NEVER else int(step)}
                     for s, step in enumerate(exit_steps)]
        entry = {**label, "step": grid.tolist(), "chains": len(logs), "diverged": diverged}
        for key in ("test_accuracy", "clean_train_loss", "trace_V", "distance"):
            mean, stderr = stats.mean_and_stderr(np.array([log[key] for log in logs]), axis=0)
            entry[key], entry[f"{key}_stderr"] = mean.tolist(), stderr.tolist()
        metrics.append(entry)
    return {"curves": curves, "exit_time": exits, "network_metrics": metrics,
            "poor_minimum": [poor], "network_exit_seed": per_seed,
            "network_exit_paired": stats.paired_table(per_seed, "restricted_exit_step", BASELINES)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer chains, seeds and steps (the same experiment, "
                                        "under a minute of CPU time)")
    parser.add_argument("--protocol", choices=("landscape", "network", "all"), default="all")
    add_executor_arguments(parser)
    return parser.parse_args(argv)


def landscape_memory(settings: dict[str, Any]) -> list[memory.Part]:
    """What the landscape protocol holds at its peak: the larger of a discrete run and an SDE
    run (every step's state kept, for the exit times), and the per-chain exit records of every
    rule."""
    problem = SharpFlatLandscape(n=settings["n"])
    steps, batch, sampling = settings["steps"], settings["batch"], settings["sampling"]
    discrete = ensemble.run_parts(problem, batch=batch, sampling=sampling, steps=steps,
                                  chains=settings["chains"])
    model = sde.AlgorithmSDE(problem, "usam", eta=settings["eta"], rho=settings["rho"],
                             batch=batch, sampling=sampling)
    continuous = sde.integration_parts(model, chains=settings["sde_chains"], channels=problem.n,
                                       dim=problem.dim, steps=steps)
    rules = 3 + 2 * len(settings["micros"]) + len(settings["sde_micros"]) + 1
    records = memory.Part(f"the per-chain exit records of {rules} rules", "chains",
                          settings["chains"], rules * settings["chains"] * PER_CHAIN_RECORD_BYTES,
                          "lower chains")
    return [records, *max(discrete, continuous, key=lambda parts: sum(p.nbytes for p in parts))]


def headline_rows(results: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """Every rule's restricted mean exit step with its interval, and how many escaped."""
    return [(f"{row['protocol']} {row['kind']} {rule_name(row)}",
             f"exit step {interval(row['mean'], row['ci_low'], row['ci_high'])}, "
             f"escaped {row['escaped']}/{row['chains']}") for row in results["exit_time"]]


@exits_on_task_failure("escape_speed")
def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
    where = check_executor_arguments(args)
    settings: dict[str, Any] = {"experiment": "escape_speed", "protocol": args.protocol,
                                "quick": args.quick, "seed": args.seed, "device": args.device}
    if args.protocol in ("landscape", "all"):
        settings["landscape"] = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        memory.require(landscape_memory(settings["landscape"]), args.device)
    if args.protocol in ("network", "all"):
        settings["network"] = {**NETWORK, **(NETWORK_QUICK if args.quick else {})}
        digits.check_protocol_cache(settings["network"], args.cache)
    out = prepare_out(args, "escape_speed")
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
            parts.append(landscape_protocol(settings["landscape"], args.seed, args.device, run))
        if "network" in settings:
            parts.append(network_protocol(settings["network"], args.seed, args.device, args.cache,
                                          progress, run))
    metadata = {**timed_metadata(args.device, wall, cpu), "executor": where, "tasks": len(done),
                "tasks_cpu_time_s": sum(record["metadata"]["cpu_time_s"] for record in done)}
    record = make_record(settings, merge_tables(parts), metadata)
    for written in publish(record, out):
        print(written)
    print_headline("escape_speed", headline_rows(record["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("escape_speed", main))
