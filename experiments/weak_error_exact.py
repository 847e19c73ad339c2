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
``expansions``) and ``OUT/weak_error_exact.{png,pdf}``; without ``--out``, OUT is a fresh
``runs/weak_error_exact-*`` folder. The run takes seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sdesam.algorithms import get_rule  # noqa: E402
from sdesam.cli import guarded  # noqa: E402
from sdesam.experiment.arguments import bare_parser, prepare_out  # noqa: E402
from sdesam.experiment.records import make_record, timed_metadata, write_json  # noqa: E402
from sdesam.plotting.style import save, settings_note  # noqa: E402
from sdesam.problems import Quadratic  # noqa: E402
from sdesam.simulation import exact_expansion  # noqa: E402

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


def run_name(row: dict[str, Any]) -> str:
    """A run's display name: the rule's label with its micro-batch size (m = B for USAM)."""
    rule = get_rule(row["rule"])
    if rule.micro:
        return f"{rule.label} m={row['micro']}"
    return f"{rule.label} (m=B={row['batch']})" if rule.ascent == "part" else rule.label


# ---------------------------------------------------------------------- the figure
PALETTE = ("black", "tab:orange", "tab:green", "tab:purple", "tab:blue", "tab:red", "tab:brown")
"""One colour per run, in the order of ``settings["runs"]``."""


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Top row: |E f(x_K) - E f(X_T)| against eta on log axes per sampling scheme (solid: the
    full SDE, dashed: without the tr V term) with reference slopes 1 and 1/2. Bottom row: the
    same signed errors divided by sqrt(eta), against sqrt(eta): the intercept is the sqrt(eta)
    coefficient a; the predicted a of the runs without the term are the dotted lines."""
    settings, results = data["settings"], data["results"]
    name, batch = settings["headline_test_fn"], settings["batch"]
    samplings = settings["samplings"]
    colours = {(rule, micro): PALETTE[k % len(PALETTE)]
               for k, (rule, micro) in enumerate(settings["runs"])}
    widths = {(rule, micro): max(3.0 - 0.5 * k, 1.2)       # earlier runs wider, so a curve
              for k, (rule, micro) in enumerate(settings["runs"])}  # drawn over one shows it
    fig, axes = plt.subplots(2, len(samplings), figsize=(5.8 * len(samplings), 9.0), squeeze=False)
    for column, sampling in enumerate(samplings):
        rows = [r for r in results["errors"] if r["sampling"] == sampling]
        top, bottom = axes[0, column], axes[1, column]
        for key in dict.fromkeys((r["rule"], r["micro"]) for r in rows):
            for variant in ("full", "without_noise_term"):
                chosen = sorted((r for r in rows if (r["rule"], r["micro"]) == key
                                 and r["variant"] == variant), key=lambda r: r["eta"])
                if not chosen:
                    continue
                full = variant == "full"
                eta = np.array([r["eta"] for r in chosen])
                error = np.array([r[f"error_{name}"] for r in chosen])
                kwargs = {"color": colours[key], "ls": "-" if full else "--", "lw": widths[key],
                          "marker": "o" if full else "s", "ms": 4 if full else 5,
                          "fillstyle": "full" if full else "none"}
                text = run_name(chosen[0]) + ("" if full else ", SDE without tr V term")
                top.loglog(eta, np.abs(error), label=text if column == 0 else None, **kwargs)
                bottom.semilogx(np.sqrt(eta), error / np.sqrt(eta), **kwargs)
        for fit in (r for r in results["expansions"] if r["sampling"] == sampling
                    and r["test_fn"] == name and r["variant"] != "full"):
            bottom.axhline(fit["predicted_a"], color=colours[(fit["rule"], fit["micro"])],
                           ls=":", lw=1.2)
        _reference_slopes(top, rows, name, column == 0)
        top.set_xlabel("eta  (rho = kappa sqrt(eta))")
        top.set_ylabel(f"|E {name}(x_K) - E {name}(X_T)|")
        top.set_title(f"{sampling}: exact weak error at T={settings['horizon']:g}", fontsize=10)
        top.grid(True, which="major", alpha=0.3)
        bottom.axhline(0.0, color="grey", lw=0.6)
        bottom.set_xlabel("sqrt(eta)")
        bottom.set_ylabel(f"signed error / sqrt(eta)   ({name})")
        bottom.set_title(f"{sampling}: intercept = sqrt(eta) coefficient a;\n"
                         "dotted: predicted a without the tr V term", fontsize=10)
        bottom.grid(True, alpha=0.3)
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Exact weak errors of the affine rules on a {settings['dim']}-D quadratic, "
                 f"N={settings['n']}, B={batch}, kappa={settings['kappa']:g} "
                 f"({settings_note(settings)})", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, out_stem)


def _reference_slopes(ax: Any, rows: list[dict[str, Any]], name: str, labelled: bool) -> None:
    """Grey reference lines of slope 1 (beside the full SDEs' errors) and 1/2 (beside the
    errors without the tr V term), anchored at the smallest eta so they never cross the data."""
    low, high = min(r["eta"] for r in rows), max(r["eta"] for r in rows)
    grid = np.array([low, high])
    for slope, variant, factor, ls in ((1.0, "full", 0.3, (0, (6, 3))),
                                       (0.5, "without_noise_term", 2.5, (0, (1, 2)))):
        at_low = [abs(r[f"error_{name}"]) for r in rows if r["eta"] == low and r["variant"] == variant]
        if at_low:
            anchor = factor * (min(at_low) if factor < 1 else max(at_low))
            ax.loglog(grid, anchor * (grid / low) ** slope, color="grey", ls=ls, lw=1.2,
                      label=f"reference slope {slope:g}" if labelled else None)


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
    paths = [write_json(Path(out) / "weak_error_exact.json", record),
             *draw(record, Path(out) / "weak_error_exact")]
    for path in paths:
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
