"""SDE against discrete trajectories: weak error of the first-order SDEs of the SAM family.

Problem: ridge-regularised logistic regression on 8 Gaussian examples in 2-D (non-quadratic,
so tr V varies with x). For each run (USAM, m-USAM at two m, SAM, m-SAM at two m, RW-SAM at two
lam) the discrete ensemble and its SDE -- the full first-order SDE and the same SDE without
its noise-induced drift term -- are simulated from the same start to the horizon T with
dt = eta/4 (Euler with dt = eta would add an O(eta) error of the size being measured). For the
test functions loss, |x|^2, x_0 and tr V the weak error is measured both as the max over steps
``max_k |E g(x_k) - E g(X_{k eta})|`` and at the horizon ``|E g(x_K) - E g(X_T)|``, with
Monte-Carlo standard errors and the number of chains (and of diverged chains) behind each.
Sweeps: eta with rho = kappa sqrt(eta) (orders fitted on the loss, with 95% intervals), eta
at fixed rho, and rho at fixed eta (both for the ablation run m-USAM, m = 1).

A task is one side of one setting -- the discrete rule, or one SDE variant -- over one block of
``chunk`` chains (``chains`` split into blocks with their own seeds, their moments pooled), run
in parallel (``--jobs``, ``--scheduler``); its seed comes from its settings and ``--seed``. A
setting two sweeps share is simulated once. Each task writes ``OUT/tasks/<key>.json``, so an
interrupted run resumes where it stopped when started again with the same ``--out``.
Writes ``OUT/sde_vs_discrete.json`` (the one record schema) and ``OUT/sde_vs_discrete.{png,pdf}``;
without ``--out``, OUT is a fresh ``runs/sde_vs_discrete-*`` folder.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from sdesam.simulation import compare, ensemble, memory, sde
from sdesam import validation
from sdesam.algorithms import get_rule
from sdesam.cli import guarded
from sdesam.experiment.arguments import bare_parser, prepare_out
from sdesam.experiment.executor import add_executor_arguments, check_executor_arguments, run_sweep
from sdesam.experiment.tasks import Task, block_tasks, exits_on_task_failure, moments_json, pool_moments
from sdesam.simulation.chains import recorded_steps
from sdesam.experiment.headline import interval, print_headline, rule_name
from sdesam.plotting import publish
from sdesam.problems import LogisticRegression
from sdesam.experiment.records import make_record, run_metadata

DEFAULT: dict[str, Any] = {
    "n": 8, "dim": 2, "l2": 0.1, "data_seed": 0, "x0": [1.0, -1.0], "horizon": 1.6,
    "batch": 4, "kappa": 0.5, "etas": [0.4, 0.2, 0.1, 0.05], "substeps": sde.SUBSTEPS,
    "runs": [["usam", None, None], ["m-usam", 2, None], ["m-usam", 1, None],
             ["sam", None, None], ["m-sam", 2, None], ["m-sam", 1, None],
             ["rw-sam", None, 1.0], ["rw-sam", None, 4.0]],
    "fixed_rho": 0.1, "fixed_eta": 0.05, "rhos": [0.4, 0.2, 0.1, 0.05],
    "ablation_run": ["m-usam", 1, None], "chains": 24000, "chunk": 24000,
    "test_fns": ["loss", "sq_norm", "coord0", "trace_V"], "order_test_fn": "loss",
    "sampling": "with-replacement", "seed": 0}
QUICK: dict[str, Any] = {
    "etas": [0.4, 0.2, 0.1], "rhos": [0.4, 0.2, 0.1], "horizon": 0.8, "chains": 1500,
    "chunk": 1500, "runs": [["usam", None, None], ["m-usam", 1, None], ["sam", None, None],
                            ["rw-sam", None, 4.0]]}


def make_problem(settings: dict[str, Any]) -> LogisticRegression:
    """The logistic-regression problem of the experiment, drawn from ``data_seed``."""
    generator = torch.Generator().manual_seed(settings["data_seed"])
    features = torch.randn(settings["n"], settings["dim"], generator=generator, dtype=torch.float64)
    labels = (torch.rand(settings["n"], generator=generator, dtype=torch.float64) < 0.5).double()
    return LogisticRegression(features, labels, l2=settings["l2"])


def sweep_points(settings: dict[str, Any]) -> list[tuple[str, str, int | None, float | None, float, float]]:
    """(sweep, algorithm, micro, lam, eta, rho) for every setting of the three sweeps."""
    points = [("coupled", algorithm, micro, lam, eta, settings["kappa"] * eta ** 0.5)
              for algorithm, micro, lam in settings["runs"] for eta in settings["etas"]]
    algorithm, micro, lam = settings["ablation_run"]
    points += [("fixed_rho", algorithm, micro, lam, eta, settings["fixed_rho"])
               for eta in settings["etas"]]
    points += [("fixed_eta", algorithm, micro, lam, settings["fixed_eta"], rho)
               for rho in settings["rhos"]]
    return points


PROBLEM_KEYS = ("n", "dim", "l2", "data_seed", "x0", "horizon", "batch", "substeps", "sampling",
                "test_fns", "device")
"""The settings every task of the sweep shares (the problem, the start and the horizon)."""


def side_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Moments of the test functions at every step, over one block of chains of one side of a
    comparison -- the discrete rule or one SDE variant (:data:`compare.VARIANTS`) -- with its
    chain and divergence counts: one task of the sweep."""
    problem = make_problem(settings)
    eta, horizon, side = settings["eta"], settings["horizon"], settings["side"]
    common = dict(eta=eta, rho=settings["rho"], batch=settings["batch"], micro=settings["micro"],
                  lam=settings["lam"], x0=torch.tensor(settings["x0"], dtype=torch.float64),
                  sampling=settings["sampling"], device=settings["device"], every=1,
                  keep_states=False, test_fns=settings["test_fns"], chains=settings["chains"],
                  seed=seed)
    if side == "discrete":
        run = ensemble.run(problem, settings["rule"], steps=round(horizon / eta), **common)
    else:
        run = sde.simulate(problem, settings["rule"], horizon=horizon,
                           dt=eta / settings["substeps"], drop_terms=compare.VARIANTS[side],
                           **common)
    return {"moments": [{"test_fn": name, **moments_json(run.moments[name])}
                        for name in settings["test_fns"]],
            "chains": [{"chains": run.chains, "diverged": run.diverged_count}]}


def sides(algorithm: str) -> list[str]:
    """The discrete rule and the SDE variants of ``algorithm`` (the variant without the
    noise-induced term only for rules that have one), as :func:`compare.compare_algorithm`."""
    noise_induced = get_rule(algorithm).noise_induced
    return ["discrete", *[v for v in compare.VARIANTS if noise_induced or not compare.VARIANTS[v]]]


def point_tasks(settings: dict[str, Any], point: tuple) -> dict[str, list[Task]]:
    """The tasks of one setting of the sweeps, by side: a block of chains each."""
    _, algorithm, micro, lam, eta, rho = point
    base = {"experiment": "sde_vs_discrete", **{key: settings[key] for key in PROBLEM_KEYS},
            "rule": algorithm, "micro": micro, "lam": lam, "eta": eta, "rho": rho}
    return {side: block_tasks(side_task, {**base, "side": side}, chains=settings["chains"],
                              block=settings["chunk"], sweep_seed=settings["seed"],
                              name=f"{algorithm} m={micro} lam={lam} eta={eta:g} rho={rho:g} {side}")
            for side in sides(algorithm)}


def point_rows(settings: dict[str, Any], point: tuple,
               records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The weak-error rows of one setting from its tasks' records (by side), blocks pooled:
    one per test function and SDE variant, as :func:`compare.compare_algorithm` gives them."""
    sweep, algorithm, micro, lam, eta, rho = point

    def pooled(side: str) -> tuple[dict[str, Any], int]:
        parts = [record["results"] for record in records[side]]
        moments = {name: pool_moments([next(m for m in part["moments"] if m["test_fn"] == name)
                                       for part in parts]) for name in settings["test_fns"]}
        return moments, sum(part["chains"][0]["diverged"] for part in parts)

    reference, reference_diverged = pooled("discrete")
    recorded = recorded_steps(round(settings["horizon"] / eta), 1)
    rows = []
    for variant in sides(algorithm)[1:]:
        moments, diverged = pooled(variant)
        for name in settings["test_fns"]:
            row = {"rule": get_rule(algorithm).name, "micro": micro, "lam": lam,
                   "batch": settings["batch"], "eta": eta, "rho": rho,
                   "dt": eta / settings["substeps"], "test_fn": name, "variant": variant,
                   **compare.weak_error(reference[name], moments[name]),
                   "chains": settings["chains"], "diverged": reference_diverged + diverged,
                   "discrete_diverged": reference_diverged, "sde_diverged": diverged}
            row["argmax_step"] = recorded[row.pop("argmax_record")]
            rows.append({**row, "sweep": sweep})
    return rows


def memory_parts(settings: dict[str, Any], problem: LogisticRegression) -> list[memory.Part]:
    """The memory of the largest comparison of the sweeps (one block of ``chunk`` chains with
    running moments: :func:`sdesam.simulation.compare.comparison_parts`)."""
    candidates = [compare.comparison_parts(
        problem, algorithm, eta=eta, rho=rho, batch=settings["batch"], micro=micro, lam=lam,
        horizon=settings["horizon"], chains=settings["chains"], chunk=settings["chunk"],
        test_fns=settings["test_fns"], sampling=settings["sampling"], chains_argument="--chains")
        for _, algorithm, micro, lam, eta, rho in sweep_points(settings)]
    return max(candidates, key=lambda parts: sum(part.nbytes for part in parts))


def fitted_orders(rows: list[dict[str, Any]], test_fn: str) -> list[dict[str, Any]]:
    """Order in eta of ``test_fn``'s weak error along the rho = kappa sqrt(eta) sweep with its
    95% interval: one record per run, SDE variant and measure (max over steps, at T)."""
    coupled = [r for r in rows if r["sweep"] == "coupled" and r["test_fn"] == test_fn]
    orders = []
    keys = dict.fromkeys((r["rule"], r["micro"], r["lam"], r["variant"]) for r in coupled)
    for algorithm, micro, lam, variant in keys:
        group = sorted((r for r in coupled if (r["rule"], r["micro"], r["lam"], r["variant"])
                        == (algorithm, micro, lam, variant)), key=lambda r: r["eta"])
        for measure, field in (("max_over_steps", "weak_error"), ("at_horizon", "weak_error_T")):
            fit = compare.fit_order([r["eta"] for r in group], [r[field] for r in group])
            orders.append({"rule": algorithm, "micro": micro, "lam": lam, "variant": variant,
                           "measure": measure, "test_fn": test_fn, "order": fit["order"],
                           "order_ci_low": fit["ci_low"], "order_ci_high": fit["ci_high"],
                           "intercept": fit["intercept"], "points": len(group),
                           "chains": group[0]["chains"],
                           "diverged": sum(r["diverged"] for r in group)})
    return orders


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of the experiment."""
    parser = bare_parser(__doc__, "small settings (under a minute)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None,
                        help="output folder (default: a fresh runs/sde_vs_discrete-* folder; "
                             "the committed figure: --out figures)")
    parser.add_argument("--chains", type=int, default=None, help="override the chain count")
    parser.add_argument("--seed", type=int, default=None, help="override the seed")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_executor_arguments(parser)
    return parser.parse_args(argv)


@exits_on_task_failure("sde_vs_discrete")
def main(argv: list[str] | None = None) -> int:
    """Run the sweeps, write the data file and draw the figure."""
    args = parse_args(argv)
    validation.device("--device", args.device)
    where = check_executor_arguments(args)
    settings = {**DEFAULT, **(QUICK if args.quick else {}), "experiment": "sde_vs_discrete",
                "quick": args.quick, "device": args.device}
    if args.chains is not None:
        settings["chains"] = validation.positive_int("--chains", args.chains)
        settings["chunk"] = min(settings["chunk"], settings["chains"])
    if args.seed is not None:
        settings["seed"] = args.seed
    problem = make_problem(settings)
    memory.require(memory_parts(settings, problem), args.device)
    out = prepare_out(args, "sde_vs_discrete")
    start, cpu = time.time(), time.process_time()
    points = sweep_points(settings)
    by_point = [point_tasks(settings, point) for point in points]
    unique = {task.key: task for tasks in by_point for side in tasks.values() for task in side}
    print(f"{len(unique)} tasks on {where}", flush=True)
    records = dict(zip(unique, run_sweep(list(unique.values()), args, out / "tasks",
                                         desc="sde_vs_discrete tasks")))
    rows = []
    for point, tasks in zip(points, by_point):
        rows += point_rows(settings, point, {side: [records[task.key] for task in side_tasks]
                                             for side, side_tasks in tasks.items()})
    metadata = {**run_metadata(args.device), "wall_time_s": time.time() - start,
                "cpu_time_s": time.process_time() - cpu, "executor": where,
                "tasks": len(unique), "tasks_cpu_time_s": sum(
                    record["metadata"]["cpu_time_s"] for record in records.values())}
    orders = fitted_orders(rows, settings["order_test_fn"])
    record = make_record(settings, {"weak_errors": rows, "orders": orders}, metadata)
    for path in publish(record, out):
        print(path)
    print_headline("sde_vs_discrete", [
        *[(f"{rule_name(row)} {row['variant']} {row['measure']}",
           f"order {interval(row['order'], row['order_ci_low'], row['order_ci_high'])} (95% CI)")
          for row in orders],
        ("chains per side", f"{settings['chains']}, {sum(r['diverged'] for r in rows)} diverged; "
                            f"wall {metadata['wall_time_s']:.0f} s, tasks' CPU "
                            f"{metadata['tasks_cpu_time_s']:.0f} s ({len(unique)} tasks, {where})")])
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("sde_vs_discrete", lambda: main()))
