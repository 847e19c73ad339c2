"""Exact weak errors of the affine rules against their SDEs: no Monte Carlo, no time step.

Problem: N quadratic per-sample losses f_i(x) = 1/2 (x - c_i)^T H_i (x - c_i) in 2-D with
distinct Hessians (so tr V varies with x), drawn from ``data_seed``. For SGD, n-USAM, USAM and
m-USAM (the rules whose step is affine in x there), both sampling schemes, along
rho = kappa sqrt(eta) over a geometric eta grid: the discrete moments by their exact recursion
over every batch, the SDE's moments -- the full first-order SDE and the same SDE without its
noise-induced tr V term -- by the matrix exponential of their moment ODE
(:mod:`sdesam.simulation.exact_moments`). For each test function (the loss, |x|^2, x_0, tr V)
the signed error E g(x_K) - E g(X_T) at the horizon T, the max over the recorded times, the
local orders between neighbouring etas, the expansion e = a sqrt(eta) + b eta + c eta^{3/2}
fitted over eta <= ``fit_eta_max`` (and with two terms) and the predicted a: zero with the
term, the exact first-order response to the dropped term without it
(:mod:`sdesam.simulation.exact_expansion`).

Writes ``OUT/weak_error_exact.json`` (the one record schema: tables ``errors`` and
``expansions``) and ``OUT/weak_error_exact.{png,pdf}`` (drawn by
:mod:`sdesam.plotting.weak_error_exact`, so ``sdesam plot`` redraws it); without ``--out``, OUT is a fresh
``runs/weak_error_exact-*`` folder. The run takes seconds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from sdesam.cli import guarded
from sdesam.experiment.arguments import bare_parser, prepare_out
from sdesam.experiment.records import make_record, timed_metadata
from sdesam.plotting import publish
from sdesam.plotting.weak_error_exact import run_name
from sdesam.problems import Quadratic
from sdesam.simulation import exact_expansion

DEFAULT: dict[str, Any] = {
    "n": 4, "dim": 2, "data_seed": 0, "hessian_floor": 0.3, "x0": [1.0, -1.0], "horizon": 1.0,
    "batch": 2, "kappa": 0.5, "etas": [0.1 / 4**k for k in range(9)], "fit_eta_max": 0.025,
    "terms": 3, "records": 10,
    "runs": [["sgd", None], ["n-usam", None], ["usam", None], ["m-usam", 1]],
    "samplings": ["with-replacement", "without-replacement"],
    "test_fns": ["loss", "sq_norm", "coord0", "trace_V"], "headline_test_fn": "loss"}
QUICK: dict[str, Any] = {"etas": [0.1 / 4**k for k in range(6)]}


def make_problem(settings: dict[str, Any]) -> Quadratic:
    """N quadratics ``H_i = R_i R_i^T / 2 + floor I`` and centres ``c_i`` from ``data_seed``."""
    generator = torch.Generator().manual_seed(settings["data_seed"])
    n, dim = settings["n"], settings["dim"]
    roots = torch.randn(n, dim, dim, generator=generator, dtype=torch.float64)
    hessians = (roots @ roots.transpose(1, 2) / 2
                + settings["hessian_floor"] * torch.eye(dim, dtype=torch.float64))
    return Quadratic(hessians, torch.randn(n, dim, generator=generator, dtype=torch.float64))


# ---------------------------------------------------------------------- the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the experiment."""
    parser = bare_parser(__doc__, "fewer etas (down to 1e-4 instead of 1.5e-6)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: a fresh runs/weak_error_exact-* folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Compute the exact tables, write the data file, draw the figure, print the headline."""
    args = parse_args(argv)
    args.device = "cpu"                      # exact moments are dense float64 algebra on the CPU
    settings = {**DEFAULT, **(QUICK if args.quick else {}), "experiment": "weak_error_exact",
                "quick": args.quick}
    out = prepare_out(args, "weak_error_exact")
    problem = make_problem(settings)
    wall, cpu = time.perf_counter(), time.process_time()
    errors, expansions = [], []
    for algorithm, micro in settings["runs"]:
        for sampling in settings["samplings"]:
            rows, fits = exact_expansion.expansion_sweep(
                problem, algorithm, kappa=settings["kappa"], etas=settings["etas"],
                batch=settings["batch"], x0=settings["x0"], horizon=settings["horizon"],
                micro=micro, sampling=sampling, records=settings["records"],
                test_fns=settings["test_fns"], terms=settings["terms"],
                fit_eta_max=settings["fit_eta_max"])
            errors += rows
            expansions += fits
    record = make_record(settings, {"errors": errors, "expansions": expansions},
                         timed_metadata("cpu", wall, cpu))
    for path in publish(record, out):
        print(path)
    print_table(record)
    return 0


def print_table(record: dict[str, Any]) -> None:
    """The headline table: per run, scheme and variant, the local orders of the headline test
    function from the largest to the smallest eta, and the fitted and predicted a."""
    settings, results = record["settings"], record["results"]
    name = settings["headline_test_fn"]
    etas = sorted(settings["etas"], reverse=True)
    print(f"E {name} at T={settings['horizon']:g}, rho = {settings['kappa']:g} sqrt(eta); local "
          f"orders between eta = {etas[0]:g} / 4^k, k = 0..{len(etas) - 1}; expansion fitted "
          f"over eta <= {settings['fit_eta_max']:g} with {settings['terms']} terms")
    print(f"{'run':<16} {'sampling':<8} {'variant':<8} {'local orders':<{6 * (len(etas) - 1)}} "
          f"{'a':>10} {'b':>9} {'a (2 terms)':>11} {'predicted a':>11}")
    for fit in (r for r in results["expansions"] if r["test_fn"] == name):
        rows = sorted((r for r in results["errors"] if r["rule"] == fit["rule"]
                       and r["micro"] == fit["micro"] and r["sampling"] == fit["sampling"]
                       and r["variant"] == fit["variant"]), key=lambda r: -r["eta"])
        orders = " ".join(f"{r[f'local_order_{name}']:5.2f}" for r in rows[1:])
        variant = "full" if fit["variant"] == "full" else "no trV"
        print(f"{run_name(fit):<16} {fit['sampling'][:7]:<8} {variant:<8} {orders} "
              f"{fit['a']:>10.2e} {fit['b']:>9.3f} {fit['a_two_term']:>11.2e} "
              f"{fit['predicted_a']:>11.2e}")
    print(f"wall {record['metadata']['wall_time_s']:.1f} s, CPU {record['metadata']['cpu_time_s']:.1f} s")


if __name__ == "__main__":
    raise SystemExit(guarded("weak_error_exact", lambda: main()))
