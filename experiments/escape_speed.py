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

Writes ``OUT/escape_speed.json`` (the one record schema) and ``OUT/escape_speed.png|pdf``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from sdesam.progress import progress_bar

from sdesam.experiment import digits
from sdesam.simulation import ensemble, memory, sde
from sdesam import stats
from sdesam.algorithms import get_rule, sampling_factor
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
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
    """Discrete ensembles and SDEs from the poor minimum of the sharp/flat landscape.

    Paired: every discrete rule draws its batches from the same ``seed`` (every rule uses the
    batch size B and the same sampling, so chain k of every rule sees the same batch indices at
    every step), and every SDE the same Brownian path for chain k; the restricted exit times
    are differenced chain by chain against SGD and SAM (discrete) and against the SGD SDE.
    Not paired: discrete against SDE (different random numbers, different chain counts), and
    the step at which two rules' paths part (the same batches give different iterates).
    """
    problem = SharpFlatLandscape(n=settings["n"])
    eta, batch, rho, steps = settings["eta"], settings["batch"], settings["rho"], settings["steps"]
    start = problem.poor_minimum.to(device)
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    # SAM's radius: the size of m = 1 USAM's perturbation at the poor minimum; RW-SAM's lam
    # makes lam |g_i| of order one there.
    rho_sam, lam = rho * noise_scale, 1.0 / noise_scale
    left_edge = problem.sharp[0] - LEFT_EDGE_WIDTHS * problem.sharp[2]
    micros = settings["micros"]
    runs = [("sgd", None, "discrete")]
    runs += [(*usam_member(m, batch), "discrete") for m in micros]
    runs += [(*sam_member(m, batch), "discrete") for m in micros]
    runs += [("rw-sam", None, "discrete"), ("sgd", None, "sde")]
    runs += [(*usam_member(m, batch), "sde") for m in [*settings["sde_micros"], batch]]
    grid = np.arange(0, steps + 1, settings["log_every"])
    curves, exits, per_chain = [], [], []
    for rule, micro, kind in progress_bar(runs, desc="landscape runs", show=progress):
        options = dict(eta=eta, rho=rho_sam if get_rule(rule).normalized else rho, batch=batch,
                       micro=micro, x0=start,
                       chains=settings["chains" if kind == "discrete" else "sde_chains"],
                       seed=seed, sampling=settings["sampling"], device=device)
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
        label = {"protocol": "landscape", "rule": rule, "micro": micro, "kind": kind}
        band = stats.escaped_fraction(exit_steps, grid)
        curves.append({**label, "step": grid.tolist(), "escaped_fraction": band["fraction"].tolist(),
                       "ci_low": band["ci_low"].tolist(), "ci_high": band["ci_high"].tolist()})
        exits.append({**label, **stats.exit_time_summary(exit_steps, steps, seed=seed),
                      "diverged": int(diverged.sum()), "left_exit": int(left.sum()),
                      "left_exit_fraction": float(left.mean())})
        restricted = np.where(exit_steps == stats.NEVER, steps, exit_steps).astype(float)
        per_chain += [{"kind": kind, "rule": rule, "micro": micro, "chain": k,
                       "restricted_exit_step": value}
                      for k, value in enumerate(np.where(diverged, np.nan, restricted))]
    paired = stats.paired_table(per_chain, "restricted_exit_step", BASELINES, group=("kind",),
                                unit="chain")
    for row in paired:       # one row per pair of rules; the per-chain lists stay in memory
        del row["chains"], row["differences"]
        row["protocol"] = "landscape"
    parameters = {"rho_sam": rho_sam, "lam": lam, "saddle": problem.saddle,
                  "poor": problem.poor_minimum.item(), "good": problem.good_minimum.item(),
                  "left_edge": left_edge}
    return {"curves": curves, "exit_time": exits, "landscape_exit_paired": paired,
            "landscape_parameters": [parameters],
            "stable_points": stable_point_table(problem, settings, rho_sam, lam, seed),
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
        total += ensemble.update_direction(problem, rule, points, batches, rho=rho,
                                           micro=micro or batch, lam=rule_lam)[..., 0].sum(0)
    return total / draws


def stable_zeros(x: torch.Tensor, direction: torch.Tensor) -> list[float]:
    """Grid points where the drift -direction crosses zero from positive to negative (stable
    fixed points of the mean dynamics), linearly interpolated."""
    d = direction
    where = torch.nonzero((d[:-1] < 0) & (d[1:] >= 0)).flatten().tolist()
    u = x[:, 0]
    return [float(u[i] - d[i] * (u[i + 1] - u[i]) / (d[i + 1] - d[i])) for i in where]


def stable_point_table(problem: SharpFlatLandscape, settings: dict[str, Any], rho_sam: float,
                       lam: float, seed: int) -> list[dict[str, Any]]:
    """Stable points of every discrete rule's mean drift on [-2, 2.6] against those of f (the
    poor and good minima): a point farther than ``STABLE_MATCH`` from both is spurious (for
    m-SAM at small m one appears left of the poor well: see ``left_exit``)."""
    x = torch.linspace(-2.0, 2.6, STABLE_GRID, dtype=torch.float64).unsqueeze(-1)
    batch, minima = settings["batch"], (problem.poor_minimum.item(), problem.good_minimum.item())
    members = [("sgd", None), *[usam_member(m, batch) for m in settings["micros"]],
               *[sam_member(m, batch) for m in settings["micros"]], ("rw-sam", None)]
    table = []
    for rule, micro in members:
        rho = rho_sam if get_rule(rule).normalized else settings["rho"]
        zeros = stable_zeros(x, mean_direction(
            problem, rule, x, rho=rho, batch=batch,
            micro=micro, lam=lam if "lam" in get_rule(rule).keywords else None,
            draws=settings["drift_draws"], seed=seed))
        spurious = [z for z in zeros if min(abs(z - m) for m in minima) > STABLE_MATCH]
        table.append({"rule": rule, "micro": micro, "stable_points": zeros,
                      "spurious_stable_points": spurious, "spurious": len(spurious)})
    return table


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
    bar = progress_bar(total=len(runs) * settings["seeds"], desc="network runs", show=progress)
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


def main(argv: list[str] | None = None) -> int:
    """Run the chosen protocols and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
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
    parts = []
    if "landscape" in settings:
        parts.append(landscape_protocol(settings["landscape"], args.seed, args.device, progress))
    if "network" in settings:
        parts.append(network_protocol(settings["network"], args.seed, args.device, args.cache,
                                      progress))
    record = make_record(settings, merge_tables(parts), timed_metadata(args.device, wall, cpu))
    for written in publish(record, out):
        print(written)
    print_headline("escape_speed", headline_rows(record["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("escape_speed", main))
