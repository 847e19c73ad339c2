"""m-sharpness measured: final test accuracy, tr V and top Hessian eigenvalue against m.

The digits MLP of :mod:`sdesam.digits` is trained from PyTorch's standard initialisation on the
clean training set by m-SAM for every m dividing the batch (m = B is SAM), with SGD and RW-SAM
for comparison, several seeds each (this project's protocol). At the end: test accuracy, tr V
(exact, full training set), the top Hessian eigenvalue of the training loss (Lanczos) and the
wall time spent in optimizer steps relative to SAM's, which places RW-SAM on the cost axis.
Writes ``OUT/m_sharpness.json`` and the figure.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sdesam.experiment_args import check_device, experiment_parser
from sdesam import digits, per_sample, sgn
from sdesam.plotting import publish
from sdesam.records import run_metadata

SETTINGS = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 4, 5, 10],
            "steps": 1500, "seeds": 4, "hidden": 128, "lanczos_iterations": 20,
            "n_train": 1000, "n_random": 200, "gd_lr": 0.5, "gd_steps": 4000}
QUICK = {"steps": 300, "seeds": 2, "micros": [1, 5]}
METRICS = ("test_accuracy", "trace_V", "hessian_top", "optimizer_seconds")


def measure(settings: dict[str, Any], seed: int, device: str, progress: bool) -> list[dict[str, Any]]:
    """Train every optimizer from the standard initialisation and measure the end point."""
    data = digits.load_digits_data(settings["n_train"], settings["n_random"], seed=0, device=device)
    # RW-SAM's lam follows the rule of the other theory figures: the inverse of the mean
    # per-sample gradient norm at the protocol's poor minimum.
    poor, _ = digits.poor_minimum(data, hidden=settings["hidden"], lr=settings["gd_lr"],
                                  steps=settings["gd_steps"], seed=0,
                                  cache_dir=settings["cache_dir"], progress=progress)
    norms = per_sample.per_sample_grad_norms(poor, digits.per_sample_loss, data.train_x, data.train_y)
    settings["lam"] = 1.0 / float(norms.mean())
    batch = settings["batch"]
    runs = [("sgd", None), *[("m-sam", m) for m in settings["micros"]], ("sam", batch),
            ("rw-sam", None)]
    points = []
    bar = tqdm(total=len(runs) * settings["seeds"], desc="m-sharpness runs", disable=not progress)
    for algorithm, micro in runs:
        values: dict[str, list[float]] = {key: [] for key in METRICS}
        for s in range(settings["seeds"]):
            start = digits.make_model(settings["hidden"], seed=1000 + s).to(device)
            log = digits.continue_training(
                start, algorithm, data, lr=settings["lr"], batch=batch, steps=settings["steps"],
                seed=seed + s, log_every=settings["steps"],
                micro=micro if algorithm == "m-sam" else None, rho=settings["rho"],
                lam=settings["lam"], delta=settings["delta"], return_model=True)
            values["test_accuracy"].append(log["test_accuracy"][-1])
            values["trace_V"].append(log["trace_V"][-1])
            values["optimizer_seconds"].append(log["optimizer_seconds"])
            values["hessian_top"].append(float(sgn.hessian_top_eigenvalues(
                log["model"], digits.per_sample_loss, data.train_x, data.train_y, 1,
                iterations=settings["lanczos_iterations"], seed=s)[0]))
            bar.update()
        point: dict[str, Any] = {"algorithm": algorithm, "micro": micro if micro else batch,
                                 "seeds": settings["seeds"], "per_seed": values}
        for key, series in values.items():
            point[f"{key}_mean"] = float(np.mean(series))
            point[f"{key}_std"] = float(np.std(series, ddof=1)) if len(series) > 1 else 0.0
        points.append(point)
    bar.close()
    sam_cost = next(p for p in points if p["algorithm"] == "sam")["optimizer_seconds_mean"]
    for point in points:
        point["relative_cost"] = point["optimizer_seconds_mean"] / sam_cost
    return points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = experiment_parser(__doc__, "fewer seeds, steps and m values (the same experiment, < 2 minutes)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the protocol and write the data file and figure."""
    args = parse_args(argv)
    check_device(args.device)
    began = time.perf_counter()
    settings: dict[str, Any] = {"experiment": "m_sharpness", "quick": args.quick,
                                "seed": args.seed, "device": args.device,
                                **SETTINGS, **(QUICK if args.quick else {}),
                                "cache_dir": args.cache or f"{args.out}/cache"}
    points = measure(settings, args.seed, args.device, not args.no_progress)
    settings["wall_time_s"] = time.perf_counter() - began
    settings.update(run_metadata(args.device))
    for written in publish({"settings": settings, "points": points}, args.out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
