"""tr V, the trace of the gradient-noise covariance, along training (this project's protocols).

* network-poor / network-init -- the digits MLP of :mod:`sdesam.digits`, continued from the
  poor minimum and trained from PyTorch's standard initialisation, with SGD, SAM, m-SAM over
  several m and RW-SAM (``sdesam.optim``), several seeds; tr V exact on the full clean training
  set at logged steps (mean and one standard error over seeds).
* landscape -- ensembles of SGD, USAM, m-USAM, SAM, m-SAM and RW-SAM started at the poor
  minimum of :class:`sdesam.problems.SharpFlatLandscape` (mean of tr V over chains, one
  standard error).

Also a table in the style of the paper's Table 6: tr V at the end of training per optimizer,
mean and standard deviation over seeds. Writes ``OUT/sgn_trace.json`` and the figure.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sdesam.experiment_args import check_device, experiment_parser
from sdesam import digits, ensemble, per_sample, sgn, stats
from sdesam.algorithms import get_rule
from sdesam.plotting import publish
from sdesam.problems import SharpFlatLandscape
from sdesam.records import run_metadata

NETWORK = {"lr": 0.07, "batch": 20, "rho": 0.05, "delta": 1e-3, "micros": [1, 2, 5],
           "steps_poor": 600, "steps_init": 1500, "log_every": 50, "seeds": 4, "hidden": 128,
           "gd_lr": 0.5, "gd_steps": 4000, "n_train": 1000, "n_random": 200}
NETWORK_QUICK = {"steps_poor": 200, "steps_init": 300, "seeds": 2, "micros": [1],
                 "log_every": 50}
LANDSCAPE = {"n": 32, "eta": 0.02, "batch": 16, "rho": 0.005, "chains": 1000, "steps": 3000,
             "log_every": 25, "micros": [1, 4], "sampling": "with-replacement"}
LANDSCAPE_QUICK = {"chains": 200, "steps": 800}


def network_runs(settings: dict[str, Any], seed: int, device: str, progress: bool,
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """tr V curves and end-of-training values for every optimizer, from both starts."""
    data = digits.load_digits_data(settings["n_train"], settings["n_random"], seed=0, device=device)
    poor, summary = digits.poor_minimum(data, hidden=settings["hidden"], lr=settings["gd_lr"],
                                        steps=settings["gd_steps"], seed=0,
                                        cache_dir=settings["cache_dir"], progress=progress)
    settings["poor_minimum"] = summary
    norms = per_sample.per_sample_grad_norms(poor, digits.per_sample_loss, data.train_x, data.train_y)
    settings["lam"] = 1.0 / float(norms.mean())
    runs = [("sgd", None), *[("m-sam", m) for m in settings["micros"]],
            ("sam", settings["batch"]), ("rw-sam", None)]
    curves, final = [], []
    bar = tqdm(total=2 * len(runs) * settings["seeds"], desc="network runs", disable=not progress)
    for protocol, steps in (("network-poor", settings["steps_poor"]),
                            ("network-init", settings["steps_init"])):
        for algorithm, micro in runs:
            traces = []
            for s in range(settings["seeds"]):
                start = poor if protocol == "network-poor" else \
                    digits.make_model(settings["hidden"], seed=1000 + s).to(device)
                log = digits.continue_training(
                    start, algorithm, data, lr=settings["lr"], batch=settings["batch"],
                    steps=steps, seed=seed + s, log_every=settings["log_every"],
                    micro=micro if algorithm == "m-sam" else None, rho=settings["rho"],
                    lam=settings["lam"], delta=settings["delta"])
                traces.append(log["trace_V"])
                bar.update()
            label = {"protocol": protocol, "algorithm": algorithm,
                     "micro": micro if micro is not None else settings["batch"]}
            mean, stderr = stats.mean_and_stderr(np.array(traces), axis=0)
            curves.append({**label, "step": log["step"], "trace": mean.tolist(),
                           "stderr": stderr.tolist()})
            ends = np.array([t[-1] for t in traces])
            final.append({**label, "trace_mean": float(ends.mean()),
                          "trace_std": float(ends.std(ddof=1)) if len(ends) > 1 else 0.0,
                          "seeds": len(ends)})
    bar.close()
    return curves, final


def landscape_runs(settings: dict[str, Any], seed: int, device: str,
                   progress: bool) -> list[dict[str, Any]]:
    """Mean tr V over chains along ensembles started at the landscape's poor minimum."""
    problem = SharpFlatLandscape(n=settings["n"])
    noise_scale = math.sqrt(problem.trace_V(problem.poor_minimum).item())
    settings.update(rho_sam=settings["rho"] * noise_scale, lam=1.0 / noise_scale)
    batch = settings["batch"]
    runs = [("sgd", None), *[("m-usam", m) for m in settings["micros"]], ("usam", batch),
            *[("m-sam", m) for m in settings["micros"]], ("sam", batch), ("rw-sam", None)]
    curves = []
    for index, (algorithm, micro) in enumerate(tqdm(runs, desc="landscape runs",
                                                    disable=not progress)):
        sam_like = algorithm in ("sam", "m-sam", "rw-sam")
        path = ensemble.run(problem, algorithm, eta=settings["eta"],
                            rho=settings["rho_sam"] if sam_like else settings["rho"], batch=batch,
                            micro=micro if algorithm.startswith("m-") else None,
                            x0=problem.poor_minimum.to(device), steps=settings["steps"],
                            chains=settings["chains"], seed=seed + index,
                            sampling=settings["sampling"], device=device,
                            lam=settings["lam"] if "lam" in get_rule(algorithm).keywords else None
                            ).states
        logged = path[:: settings["log_every"]]
        mean, stderr = sgn.trace_along_path(problem, logged)
        curves.append({"protocol": "landscape", "algorithm": algorithm,
                       "micro": micro if micro is not None else batch,
                       "step": list(range(0, settings["steps"] + 1, settings["log_every"])),
                       "trace": mean.tolist(), "stderr": stderr.tolist()})
    return curves


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
    settings: dict[str, Any] = {"experiment": "sgn_trace", "protocol": args.protocol,
                                "quick": args.quick, "seed": args.seed, "device": args.device}
    curves: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    progress = not args.no_progress
    if args.protocol in ("landscape", "all"):
        settings["landscape"] = {**LANDSCAPE, **(LANDSCAPE_QUICK if args.quick else {})}
        curves += landscape_runs(settings["landscape"], args.seed, args.device, progress)
    if args.protocol in ("network", "all"):
        settings["network"] = {**NETWORK, **(NETWORK_QUICK if args.quick else {}),
                               "cache_dir": args.cache or f"{args.out}/cache"}
        net_curves, final = network_runs(settings["network"], args.seed, args.device, progress)
        curves += net_curves
    settings["wall_time_s"] = time.perf_counter() - began
    settings.update(run_metadata(args.device))
    for written in publish({"settings": settings, "curves": curves, "final": final}, args.out):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
