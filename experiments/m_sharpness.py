"""m-sharpness measured: final test accuracy, tr V and top Hessian eigenvalue against m.

The digits MLP of :mod:`sdesam.experiment.digits` is trained from PyTorch's standard initialisation on the
clean training set by m-SAM for every m dividing the batch (m = B is SAM), with SGD and RW-SAM
for comparison, several seeds each (this project's protocol). At the end: test accuracy, tr V
(exact, full training set), the top Hessian eigenvalue of the training loss (Lanczos) and the
wall time spent in optimizer steps relative to SAM's, which places RW-SAM on the cost axis.
Every rule runs the same seeds (initialisation 1000 + s, batch order seed + s), so each
quantity is also compared seed by seed against SGD and SAM (paired differences).
Writes ``OUT/m_sharpness.json`` (the one record schema) and the figure.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sdesam.experiment import digits
from sdesam import sgn, stats
from sdesam.cli import guarded
from sdesam.experiment.arguments import experiment_parser, prepare_out
from sdesam.plotting import publish
from sdesam.experiment.records import make_record, timed_metadata

SETTINGS = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 4, 5, 10],
            "steps": 1500, "seeds": 4, "hidden": 128, "lanczos_iterations": 20,
            "n_train": 1000, "n_random": 200, "gd_lr": 0.5, "gd_steps": 4000}
QUICK = {"steps": 100, "seeds": 2, "micros": [1, 5], "lanczos_iterations": 10}
METRICS = ("test_accuracy", "trace_V", "hessian_top", "optimizer_seconds")
PAIRED = ("test_accuracy", "trace_V", "hessian_top")
BASELINES = ("sgd", "sam")
"""The rules every other rule is compared with, seed by seed."""


def measure(settings: dict[str, Any], seed: int, device: str, cache: str | None,
            progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Train every optimizer from the standard initialisation and measure the end point."""
    # RW-SAM's lam follows the rule of the other theory figures: the inverse of the mean
    # per-sample gradient norm at the protocol's poor minimum.
    data, _, poor = digits.protocol_start(settings, cache_dir=cache, device=device,
                                          progress=progress)
    runs = [("sgd", None), *[("m-sam", m) for m in settings["micros"]], ("sam", None),
            ("rw-sam", None)]
    per_seed = []
    bar = tqdm(total=len(runs) * settings["seeds"], desc="m-sharpness runs", disable=not progress)
    for rule, micro in runs:
        for s in range(settings["seeds"]):
            start = digits.make_model(settings["hidden"], seed=1000 + s).to(device)
            log = digits.continue_training(
                start, rule, data, lr=settings["lr"], batch=settings["batch"],
                steps=settings["steps"], seed=seed + s, log_every=settings["steps"], micro=micro,
                rho=settings["rho"], lam=poor["lam"], delta=settings["delta"], return_model=True)
            top = sgn.hessian_top_eigenvalues(log["model"], digits.per_sample_loss, data.train_x,
                                              data.train_y, 1,
                                              iterations=settings["lanczos_iterations"], seed=s)
            per_seed.append({"rule": rule, "micro": micro, "seed": seed + s, "init_seed": 1000 + s,
                             "test_accuracy": log["test_accuracy"][-1],
                             "trace_V": log["trace_V"][-1], "hessian_top": float(top[0]),
                             "optimizer_seconds": log["optimizer_seconds"]})
            bar.update()
    bar.close()
    return {"points": summarize(per_seed), "per_seed": per_seed, "poor_minimum": [poor],
            "paired": [row for key in PAIRED for row in stats.paired_table(per_seed, key, BASELINES)]}


def summarize(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (rule, micro): mean and sample std of each metric over seeds, the count of
    seeds and of diverged ones, and the optimizer time relative to SAM's."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in per_seed:
        groups.setdefault((row["rule"], row["micro"]), []).append(row)
    points = []
    for (rule, micro), rows in groups.items():
        values = np.array([[row[key] for key in METRICS] for row in rows])      # [seeds, metrics]
        point: dict[str, Any] = {"rule": rule, "micro": micro, "chains": len(rows),
                                 "diverged": stats.non_finite_chains(values, chain_axis=0)}
        for k, key in enumerate(METRICS):
            point[key] = float(values[:, k].mean())
            point[f"{key}_std"] = float(values[:, k].std(ddof=1)) if len(rows) > 1 else 0.0
        points.append(point)
    sam_cost = next(p for p in points if (p["rule"], p["micro"]) == ("sam", None))["optimizer_seconds"]
    for point in points:
        point["relative_cost"] = point["optimizer_seconds"] / sam_cost
    return points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer seeds, steps and m values (the same experiment, "
                                        "under a minute of CPU time)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the protocol and write the data file and figure."""
    args = parse_args(argv)
    out = prepare_out(args, "m_sharpness")
    wall, cpu = time.perf_counter(), time.process_time()
    settings: dict[str, Any] = {"experiment": "m_sharpness", "quick": args.quick,
                                "seed": args.seed, "device": args.device,
                                **SETTINGS, **(QUICK if args.quick else {})}
    results = measure(settings, args.seed, args.device, args.cache, not args.no_progress)
    record = make_record(settings, results, timed_metadata(args.device, wall, cpu))
    for written in publish(record, out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("m_sharpness", main))
