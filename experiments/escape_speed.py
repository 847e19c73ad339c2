"""Speed of escape from a poor, sharp minimum for SGD and the SAM family (this project's protocols).

Two protocols (``--protocol landscape|network|all``):

* landscape -- K chains start at the sharp, noisy minimum of
  :class:`sdesam.problems.SharpFlatLandscape`; discrete ensembles of SGD, USAM, m-USAM (m in
  ``micros``, default 1, 2, 4, ..., B), SAM, m-SAM and RW-SAM, and the SDEs of SGD and the USAM family, all with the
  same step size and batch (the SDEs, costlier per step, with fewer chains and a subset of m).
  Recorded: the fraction of chains past the saddle against steps
  (Wilson bands) and the restricted mean first-exit time E[min(tau, T)] with bootstrap bands.
* network -- an MLP on scikit-learn's digits, driven to a poor minimum by full-batch GD on the
  clean training set plus a random-label block (:mod:`sdesam.experiment.digits`), then continued on the
  clean set by SGD, SAM, m-SAM over several m and RW-SAM (``sdesam.optim``), several seeds each.
  "Escape" is the first logged step at which test accuracy exceeds its value at the poor
  minimum by ``threshold``. Every rule runs the same seeds (same start, same batch order), so
  exit steps are also compared seed by seed (paired differences against SGD and SAM).

Writes ``OUT/escape_speed.json`` (the one record schema) and ``OUT/escape_speed.png|pdf``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdesam.experiment import digits
from sdesam.simulation import ensemble, sde
from sdesam import stats
from sdesam.algorithms import get_rule, sampling_factor
from sdesam.cli import guarded
from sdesam.experiment.arguments import experiment_parser, prepare_out
from sdesam.plotting import publish
from sdesam.problems import SharpFlatLandscape
from sdesam.experiment.records import make_record, timed_metadata

LANDSCAPE = {"n": 32, "eta": 0.02, "batch": 16, "rho": 0.005, "chains": 1000, "sde_chains": 500,
             "micros": [1, 2, 4, 8, 16], "sde_micros": [1, 2, 4], "steps": 3000, "log_every": 20,
             "sampling": "with-replacement"}
LANDSCAPE_QUICK = {"chains": 100, "sde_chains": 50, "steps": 100, "log_every": 10,
                   "micros": [1, 16], "sde_micros": [1]}
NETWORK = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 5, 10],
           "steps": 600, "log_every": 25, "seeds": 6, "threshold": 0.02, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"steps": 50, "seeds": 2, "micros": [1], "log_every": 10}
BASELINES = ("sgd", "sam")
"""The rules every other rule's network exit step is compared with, seed by seed."""


def micro_sizes(batch: int) -> list[int]:
    """1, 2, 4, ..., batch: the micro-batch sizes of the landscape protocol."""
    return [2**k for k in range(int(math.log2(batch)) + 1)]


def usam_member(micro: int, batch: int) -> tuple[str, int | None]:
    """The USAM-family rule with micro-batch ``micro``: m-USAM, or USAM itself at m = B."""
    return ("usam", None) if micro == batch else ("m-usam", micro)


def sam_member(micro: int, batch: int) -> tuple[str, int | None]:
    """The SAM-family rule with micro-batch ``micro``: m-SAM, or SAM itself at m = B."""
    return ("sam", None) if micro == batch else ("m-sam", micro)


def landscape_protocol(settings: dict[str, Any], seed: int, device: str,
                       progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Discrete ensembles and SDEs from the poor minimum of the sharp/flat landscape."""
    problem = SharpFlatLandscape(n=settings["n"])
    eta, batch, rho, steps = settings["eta"], settings["batch"], settings["rho"], settings["steps"]
    start = problem.poor_minimum.to(device)
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    # SAM's radius: the size of m = 1 USAM's perturbation at the poor minimum; RW-SAM's lam
    # makes lam |g_i| of order one there.
    rho_sam, lam = rho * noise_scale, 1.0 / noise_scale
    micros = settings["micros"]
    runs = [("sgd", None, "discrete")]
    runs += [(*usam_member(m, batch), "discrete") for m in micros]
    runs += [(*sam_member(m, batch), "discrete") for m in micros]
    runs += [("rw-sam", None, "discrete"), ("sgd", None, "sde")]
    runs += [(*usam_member(m, batch), "sde") for m in [*settings["sde_micros"], batch]]
    grid = np.arange(0, steps + 1, settings["log_every"])
    curves, exits = [], []
    for index, (rule, micro, kind) in enumerate(tqdm(runs, desc="landscape runs",
                                                     disable=not progress)):
        options = dict(eta=eta, rho=rho_sam if get_rule(rule).normalized else rho, batch=batch,
                       micro=micro, x0=start,
                       chains=settings["chains" if kind == "discrete" else "sde_chains"],
                       seed=seed + index, sampling=settings["sampling"], device=device)
        if kind == "discrete":
            rule_lam = lam if "lam" in get_rule(rule).keywords else None
            path = ensemble.run(problem, rule, steps=steps, lam=rule_lam, **options).states
            step_of = np.arange(steps + 1)
        else:
            result = sde.simulate(problem, rule, horizon=steps * eta, dt=eta, **options)
            times, path = result.times, result.states
            step_of = np.rint(np.asarray(times.cpu()) / eta).astype(int)   # time -> step
        path = path.cpu().numpy()
        exit_index = stats.first_exit(path, problem.escaped)
        exit_steps = np.where(exit_index == stats.NEVER, stats.NEVER, step_of[exit_index])
        label = {"protocol": "landscape", "rule": rule, "micro": micro, "kind": kind}
        band = stats.escaped_fraction(exit_steps, grid)
        curves.append({**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                       "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()})
        exits.append({**label, **stats.exit_time_summary(exit_steps, steps, seed=seed),
                      "diverged": stats.non_finite_chains(path, chain_axis=1)})
    parameters = {"rho_sam": rho_sam, "lam": lam, "saddle": problem.saddle,
                  "poor": problem.poor_minimum.item(), "good": problem.good_minimum.item()}
    return {"curves": curves, "exit_time": exits, "landscape_parameters": [parameters],
            **landscape_picture(problem, settings)}


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


def network_protocol(settings: dict[str, Any], seed: int, device: str, cache: str | None,
                     progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Continue from the digits poor minimum with each optimizer over several seeds."""
    data, start, poor = digits.protocol_start(settings, cache_dir=cache, device=device,
                                              progress=progress)
    runs = [("sgd", None), *[sam_member(m, settings["batch"]) for m in settings["micros"]],
            ("sam", None), ("rw-sam", None)]
    curves, exits, metrics, per_seed = [], [], [], []
    bar = tqdm(total=len(runs) * settings["seeds"], desc="network runs", disable=not progress)
    for rule, micro in runs:
        logs = []
        for s in range(settings["seeds"]):
            logs.append(digits.continue_training(
                start, rule, data, lr=settings["lr"], batch=settings["batch"],
                steps=settings["steps"], seed=seed + s, log_every=settings["log_every"],
                micro=micro, rho=settings["rho"], lam=poor["lam"], delta=settings["delta"]))
            bar.update()
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
    bar.close()
    return {"curves": curves, "exit_time": exits, "network_metrics": metrics,
            "poor_minimum": [poor], "network_exit_seed": per_seed,
            "network_exit_paired": stats.paired_table(per_seed, "restricted_exit_step", BASELINES)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer chains, seeds and steps (the same experiment, "
                                        "under a minute of CPU time)")
    parser.add_argument("--protocol", choices=("landscape", "network", "all"), default="all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and write the data file and figure."""
    args = parse_args(argv)
    out = prepare_out(args, "escape_speed")
    wall, cpu = time.perf_counter(), time.process_time()
    settings: dict[str, Any] = {"experiment": "escape_speed", "protocol": args.protocol,
                                "quick": args.quick, "seed": args.seed, "device": args.device}
    progress = not args.no_progress
    parts = []
    if args.protocol in ("landscape", "all"):
        settings["landscape"] = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        parts.append(landscape_protocol(settings["landscape"], args.seed, args.device, progress))
    if args.protocol in ("network", "all"):
        settings["network"] = {**NETWORK, **(NETWORK_QUICK if args.quick else {})}
        parts.append(network_protocol(settings["network"], args.seed, args.device, args.cache,
                                      progress))
    results: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for table, rows in part.items():
            results.setdefault(table, []).extend(rows)
    record = make_record(settings, results, timed_metadata(args.device, wall, cpu))
    for written in publish(record, out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("escape_speed", main))
