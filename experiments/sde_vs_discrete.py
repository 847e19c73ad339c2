"""SDE against discrete trajectories: weak error of the first-order SDEs of USAM and m-USAM.

Problem: ridge-regularised logistic regression on 8 Gaussian examples in 2-D (non-quadratic,
so tr V varies with x). For each algorithm the discrete ensemble and its SDE (with and without
the noise-induced tr V drift term) are simulated from the same start to the horizon T, and the
weak error ``max_k |E g(x_k) - E g(X_{k eta})|`` is measured for the test functions loss,
|x|^2, x_0 and tr V, with Monte-Carlo standard errors. Sweeps: eta with rho = kappa sqrt(eta)
(orders fitted on the loss), eta at fixed rho, and rho at fixed eta.
Writes ``OUT/sde_vs_discrete.json`` and the figure ``OUT/sde_vs_discrete.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from sdesam import compare
from sdesam.plotting import publish
from sdesam.problems import LogisticRegression
from sdesam.records import run_metadata

DEFAULT = {"n": 8, "dim": 2, "l2": 0.1, "data_seed": 0, "x0": [1.0, -1.0], "horizon": 2.0,
           "batch": 4, "kappa": 0.3, "etas": [0.2, 0.1, 0.05, 0.025],
           "runs": [["usam", None], ["m-usam", 2], ["m-usam", 1]],
           "fixed_rho": 0.1, "fixed_eta": 0.05, "rhos": [0.4, 0.2, 0.1, 0.05],
           "ablation_run": ["m-usam", 1], "chains": 60000, "chunk": 30000,
           "test_fns": ["loss", "sq_norm", "coord0", "trace_V"], "sampling": "with-replacement",
           "seed": 0}
QUICK = {"etas": [0.2, 0.1, 0.05], "runs": [["usam", None], ["m-usam", 1]],
         "rhos": [0.4, 0.2, 0.1], "chains": 3000, "chunk": 3000, "horizon": 1.0}


def make_problem(settings: dict[str, Any]) -> LogisticRegression:
    """The logistic-regression problem of the experiment, drawn from ``data_seed``."""
    generator = torch.Generator().manual_seed(settings["data_seed"])
    features = torch.randn(settings["n"], settings["dim"], generator=generator, dtype=torch.float64)
    labels = (torch.rand(settings["n"], generator=generator, dtype=torch.float64) < 0.5).double()
    return LogisticRegression(features, labels, l2=settings["l2"])


def sweep_points(settings: dict[str, Any]) -> list[tuple[str, str, int | None, float, float]]:
    """(sweep, algorithm, micro, eta, rho) for every setting of the three sweeps."""
    points = [("coupled", algorithm, micro, eta, settings["kappa"] * eta ** 0.5)
              for algorithm, micro in settings["runs"] for eta in settings["etas"]]
    algorithm, micro = settings["ablation_run"]
    points += [("fixed_rho", algorithm, micro, eta, settings["fixed_rho"]) for eta in settings["etas"]]
    points += [("fixed_eta", algorithm, micro, settings["fixed_eta"], rho) for rho in settings["rhos"]]
    return points


def run_key(row: dict[str, Any]) -> str:
    """``"<algorithm>[m=<micro>]"``, with m = B for the rules without micro-batches."""
    micro = row["micro"] if row["micro"] is not None else row["batch"]
    return f"{row['algorithm']}[m={micro}]"


def fitted_orders(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Order in eta of the loss's weak error along the rho = kappa sqrt(eta) sweep, per run,
    for the SDE with and without the tr V term."""
    orders: dict[str, Any] = {}
    coupled = [r for r in results if r["sweep"] == "coupled" and r["test_fn"] == "loss"]
    for key in dict.fromkeys(run_key(r) for r in coupled):
        rows = [r for r in coupled if run_key(r) == key]
        etas = [r["eta"] for r in rows]
        orders[key] = compare.fit_order(etas, [r["weak_error"] for r in rows])["order"]
        orders[key + " details"] = {
            "with_variance_term": compare.fit_order(etas, [r["weak_error"] for r in rows]),
            "without_variance_term": compare.fit_order(
                etas, [r["weak_error_without_variance_term"] for r in rows])}
    return orders


def main(argv: list[str] | None = None) -> int:
    """Run the sweeps, write the data file and draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings (under a minute)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--chains", type=int, default=None, help="override the chain count")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda needs CUDA, which is not available here")
    settings = {**DEFAULT, **(QUICK if args.quick else {}), "experiment": "sde_vs_discrete",
                "quick": args.quick, "device": args.device}
    if args.chains is not None:
        settings["chains"] = compare.check_positive_int("chains", args.chains)
        settings["chunk"] = min(settings["chunk"], settings["chains"])
    problem = make_problem(settings)
    x0 = torch.tensor(settings["x0"], dtype=torch.float64)
    start = time.time()
    results = []
    for sweep, algorithm, micro, eta, rho in tqdm(sweep_points(settings), desc="settings"):
        rows = compare.compare_algorithm(
            problem, algorithm, eta=eta, rho=rho, batch=settings["batch"], micro=micro, x0=x0,
            horizon=settings["horizon"], chains=settings["chains"], seed=settings["seed"],
            test_fns=settings["test_fns"], chunk=settings["chunk"],
            sampling=settings["sampling"], device=args.device)
        results += [{**row, "sweep": sweep} for row in rows]
    settings["wall_time_s"] = time.time() - start
    settings.update(run_metadata(args.device))
    data = {"settings": settings, "results": results, "orders": fitted_orders(results)}
    for path in publish(data, args.out):
        print(path)
    for key, value in data["orders"].items():
        if not key.endswith("details"):
            details = data["orders"][key + " details"]
            print(f"{key}: order {value:.2f} with the tr V term, "
                  f"{details['without_variance_term']['order']:.2f} without")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
