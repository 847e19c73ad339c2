"""Speed of escape from a poor, sharp minimum for SGD and the SAM family (this project's protocols).

Two protocols (``--protocol landscape|network|all``):

* landscape -- K chains start at the sharp, noisy minimum of
  :class:`sdesam.problems.SharpFlatLandscape`; discrete ensembles of SGD, USAM, m-USAM (m in
  1, 2, 4, ..., B), SAM, m-SAM and RW-SAM, and the SDEs of SGD and the USAM family, all with the
  same step size and batch (the SDEs, costlier per step, with fewer chains and a subset of m).
  Recorded: the fraction of chains past the saddle against steps
  (Wilson bands) and the restricted mean first-exit time E[min(tau, T)] with bootstrap bands.
* network -- an MLP on scikit-learn's digits, driven to a poor minimum by full-batch GD on the
  clean training set plus a random-label block (:mod:`sdesam.digits`), then continued on the
  clean set by SGD, SAM, m-SAM over several m and RW-SAM (``sdesam.optim``), several seeds each.
  "Escape" is the first logged step at which test accuracy exceeds its value at the poor
  minimum by ``--threshold``.

Writes ``OUT/escape_speed.json`` and ``OUT/escape_speed.png|pdf``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdesam.experiment_args import check_device, experiment_parser
from sdesam import digits, ensemble, per_sample, sde, stats
from sdesam.algorithms import get_rule, sampling_factor
from sdesam.plotting import publish
from sdesam.problems import SharpFlatLandscape
from sdesam.records import run_metadata

LANDSCAPE = {"n": 32, "eta": 0.02, "batch": 16, "rho": 0.005, "chains": 1000, "sde_chains": 500,
             "sde_micros": [1, 2, 4], "steps": 3000, "log_every": 20,
             "sampling": "with-replacement"}
LANDSCAPE_QUICK = {"chains": 250, "sde_chains": 100, "steps": 600}
NETWORK = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 5, 10],
           "steps": 600, "log_every": 25, "seeds": 6, "threshold": 0.02, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"steps": 200, "seeds": 2, "micros": [1]}


def landscape_protocol(settings: dict[str, Any], seed: int, device: str,
                       progress: bool) -> dict[str, Any]:
    """Discrete ensembles and SDEs from the poor minimum of the sharp/flat landscape."""
    problem = SharpFlatLandscape(n=settings["n"])
    eta, batch, rho, steps = settings["eta"], settings["batch"], settings["rho"], settings["steps"]
    start = problem.poor_minimum.to(device)
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    # SAM's radius: the size of m = 1 USAM's perturbation at the poor minimum; RW-SAM's lam
    # makes lam |g_i| of order one there.
    settings.update(rho_sam=rho * noise_scale, lam=1.0 / noise_scale, saddle=problem.saddle)
    micros = [2**k for k in range(int(math.log2(batch)) + 1)]
    runs = [("sgd", None, "discrete")]
    runs += [("m-usam", m, "discrete") for m in micros[:-1]] + [("usam", batch, "discrete")]
    runs += [("m-sam", m, "discrete") for m in micros[:-1]] + [("sam", batch, "discrete")]
    runs += [("rw-sam", None, "discrete"), ("sgd", None, "sde")]
    runs += [("m-usam", m, "sde") for m in settings["sde_micros"]] + [("usam", batch, "sde")]
    grid = np.arange(0, steps + 1, settings["log_every"])
    curves, exits = [], []
    for index, (algorithm, micro, kind) in enumerate(tqdm(runs, desc="landscape runs",
                                                          disable=not progress)):
        sam_like = algorithm in ("sam", "m-sam", "rw-sam")
        options = dict(eta=eta, rho=settings["rho_sam"] if sam_like else rho, batch=batch,
                       micro=micro if algorithm.startswith("m-") else None, x0=start,
                       chains=settings["chains" if kind == "discrete" else "sde_chains"],
                       seed=seed + index,
                       sampling=settings["sampling"], device=device)
        if kind == "discrete":
            lam = settings["lam"] if "lam" in get_rule(algorithm).keywords else None
            path = ensemble.run(problem, algorithm, steps=steps, lam=lam, **options).states
            step_of = np.arange(steps + 1)
        else:
            result = sde.simulate(problem, algorithm, horizon=steps * eta, dt=eta, **options)
            times, path = result.times, result.states
            step_of = np.rint(np.asarray(times.cpu()) / eta).astype(int)   # time -> step
        exit_index = stats.first_exit(path.cpu().numpy(), problem.escaped)
        exit_steps = np.where(exit_index == stats.NEVER, stats.NEVER, step_of[exit_index])
        label = {"protocol": "landscape", "algorithm": algorithm,
                 "micro": micro if micro is not None else batch, "kind": kind}
        band = stats.escaped_fraction(exit_steps, grid)
        curves.append({**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                       "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()})
        exits.append({**label, **stats.exit_time_summary(exit_steps, steps, seed=seed)})
    return {"curves": curves, "exit_time": exits, "landscape": landscape_picture(problem, settings)}


def landscape_picture(problem: SharpFlatLandscape, settings: dict[str, Any]) -> dict[str, Any]:
    """f, tr V and m-USAM's effective potential on a grid, with the barrier of each m."""
    x = torch.linspace(-0.8, 2.6, 500, dtype=torch.float64).unsqueeze(-1)
    micros = [2**k for k in range(int(math.log2(settings["batch"])) + 1)]
    potentials, barriers = {}, {"sgd": problem.barrier()}
    for m in micros:
        c = float(sampling_factor(m, problem.n, settings["sampling"]))
        potentials[str(m)] = problem.effective_potential(x, settings["rho"], c).tolist()
        barriers[str(m)] = problem.barrier(settings["rho"], c)
    return {"x": x[:, 0].tolist(), "loss": problem.loss(x).tolist(),
            "trace_V": problem.trace_V(x).tolist(), "potential": potentials, "barrier": barriers,
            "poor": problem.poor_minimum.item(), "good": problem.good_minimum.item(),
            "saddle": problem.saddle}


def network_protocol(settings: dict[str, Any], seed: int, device: str,
                     progress: bool) -> dict[str, Any]:
    """Continue from the digits poor minimum with each optimizer over several seeds."""
    data = digits.load_digits_data(settings["n_train"], settings["n_random"], seed=0, device=device)
    start, summary = digits.poor_minimum(data, hidden=settings["hidden"], lr=settings["gd_lr"],
                                         steps=settings["gd_steps"], seed=0,
                                         cache_dir=settings["cache_dir"], progress=progress)
    settings["poor_minimum"] = summary
    # RW-SAM's lam: the inverse of the mean exact per-sample gradient norm at the start point
    norms = per_sample.per_sample_grad_norms(start, digits.per_sample_loss, data.train_x, data.train_y)
    settings["lam"] = 1.0 / float(norms.mean())
    runs = [("sgd", None), *[("m-sam", m) for m in settings["micros"]],
            ("sam", settings["batch"]), ("rw-sam", None)]
    curves, exits, metrics = [], [], []
    bar = tqdm(total=len(runs) * settings["seeds"], desc="network runs", disable=not progress)
    for algorithm, micro in runs:
        logs = []
        for s in range(settings["seeds"]):
            logs.append(digits.continue_training(
                start, algorithm, data, lr=settings["lr"], batch=settings["batch"],
                steps=settings["steps"], seed=seed + s, log_every=settings["log_every"],
                micro=micro if algorithm == "m-sam" else None, rho=settings["rho"],
                lam=settings["lam"], delta=settings["delta"]))
            bar.update()
        label = {"protocol": "network", "algorithm": algorithm,
                 "micro": micro if micro is not None else settings["batch"], "kind": "discrete"}
        grid = np.asarray(logs[0]["step"])
        accuracy = np.array([log["test_accuracy"] for log in logs]).T        # [T, seeds]
        exit_index = stats.first_rise(accuracy, settings["threshold"])
        exit_steps = np.where(exit_index == stats.NEVER, stats.NEVER, grid[exit_index])
        band = stats.escaped_fraction(exit_steps, grid)
        curves.append({**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                       "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()})
        exits.append({**label, **stats.exit_time_summary(exit_steps, settings["steps"], seed=seed)})
        entry = {**label, "step": grid.tolist()}
        for key in ("test_accuracy", "clean_train_loss", "trace_V", "distance"):
            mean, stderr = stats.mean_and_stderr(np.array([log[key] for log in logs]), axis=0)
            entry[key], entry[f"{key}_stderr"] = mean.tolist(), stderr.tolist()
        metrics.append(entry)
    bar.close()
    return {"curves": curves, "exit_time": exits, "network_metrics": metrics}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer chains, seeds and steps (the same experiment, in < 2 minutes)")
    parser.add_argument("--protocol", choices=("landscape", "network", "all"), default="all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
    began = time.perf_counter()
    settings: dict[str, Any] = {"experiment": "escape_speed", "protocol": args.protocol,
                                "quick": args.quick, "seed": args.seed, "device": args.device}
    result: dict[str, Any] = {"curves": [], "exit_time": []}
    progress = not args.no_progress
    if args.protocol in ("landscape", "all"):
        land = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        part = landscape_protocol(land, args.seed, args.device, progress)
        settings["landscape"] = land
        result["landscape"] = part.pop("landscape")
        result["curves"] += part["curves"]
        result["exit_time"] += part["exit_time"]
    if args.protocol in ("network", "all"):
        net = {**NETWORK, **(NETWORK_QUICK if args.quick else {}),
               "cache_dir": args.cache or f"{args.out}/cache"}
        part = network_protocol(net, args.seed, args.device, progress)
        settings["network"] = net
        result["network_metrics"] = part.pop("network_metrics")
        result["curves"] += part["curves"]
        result["exit_time"] += part["exit_time"]
    settings["wall_time_s"] = time.perf_counter() - began
    settings.update(run_metadata(args.device))
    for written in publish({"settings": settings, **result}, args.out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
