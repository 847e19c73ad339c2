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

Control variates (on by default, ``--plain`` turns them off): every chain runs beside a
companion -- SGD on the per-sample losses' second-order Taylor expansion halfway from the start
to the minimiser, on the same batches or the same Brownian increments -- whose expectations are
exact (:mod:`sdesam.simulation.control_variates`). This cuts the Monte-Carlo variance of each
mean 100-1000x here, so the weak errors at small eta stand many standard errors above zero.
Orders are read three ways: the least-squares slope over the eta grid and the local order
between the two smallest etas, each with its 95% Monte-Carlo interval (delta method on the
points' standard errors), and the signed error at T fitted as a sqrt(eta) + b eta + c eta^{3/2}
by weighted least squares (a = 0 expected with the noise-induced term, a != 0 without it).
Without the term, a is predicted for every rule by the first-order response of the noiseless
flow to the missing term (:mod:`sdesam.simulation.linear_response`) and compared with a less
the full SDE's a, which removes the bias the truncated fit puts in both.

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

from sdesam.simulation import (compare, control_variates, ensemble, exact_expansion,
                               linear_response, memory, sde)
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
from sdesam.stats import normal_quantile
from sdesam.experiment.records import make_record, run_metadata

DEFAULT: dict[str, Any] = {
    "n": 8, "dim": 2, "l2": 0.1, "data_seed": 0, "x0": [1.0, -1.0], "horizon": 1.6,
    "batch": 4, "kappa": 0.5, "etas": [0.4, 0.2, 0.1, 0.05, 0.025, 0.0125],
    "substeps": sde.SUBSTEPS, "control_variates": True,
    "runs": [["sgd", None, None], ["usam", None, None], ["m-usam", 2, None], ["m-usam", 1, None],
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
    points = [("coupled", algorithm, micro, lam, eta,
               settings["kappa"] * eta ** 0.5 if get_rule(algorithm).perturbed else None)
              for algorithm, micro, lam in settings["runs"] for eta in settings["etas"]]
    algorithm, micro, lam = settings["ablation_run"]
    points += [("fixed_rho", algorithm, micro, lam, eta, settings["fixed_rho"])
               for eta in settings["etas"]]
    points += [("fixed_eta", algorithm, micro, lam, settings["fixed_eta"], rho)
               for rho in settings["rhos"]]
    return points


PROBLEM_KEYS = ("n", "dim", "l2", "data_seed", "x0", "horizon", "batch", "substeps", "sampling",
                "test_fns", "device", "control_variates")
"""The settings every task of the sweep shares (the problem, the start and the horizon)."""


def side_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Moments of the test functions at every step, over one block of chains of one side of a
    comparison -- the discrete rule or one SDE variant (:data:`compare.VARIANTS`) -- with its
    chain and divergence counts: one task of the sweep. With control variates the moments are
    the controlled ones, and each test function also gets its variance reduction at T."""
    problem = make_problem(settings)
    eta, horizon, side = settings["eta"], settings["horizon"], settings["side"]
    common = dict(eta=eta, rho=settings["rho"], batch=settings["batch"], micro=settings["micro"],
                  lam=settings["lam"], x0=torch.tensor(settings["x0"], dtype=torch.float64),
                  sampling=settings["sampling"], device=settings["device"], every=1,
                  test_fns=settings["test_fns"], chains=settings["chains"], seed=seed)
    steps = round(horizon / eta)
    sde_options = dict(horizon=horizon, dt=eta / settings["substeps"],
                       drop_terms=compare.VARIANTS.get(side, ()))
    if settings["control_variates"]:
        surrogate = control_variates.quadratic_surrogate(
            problem, control_variates.midpoint(problem, common["x0"]))
        run = (control_variates.discrete(problem, settings["rule"], surrogate, steps=steps, **common)
               if side == "discrete" else
               control_variates.continuous(problem, settings["rule"], surrogate, **sde_options,
                                           **common))
        reduction = {name: run.variance_reduction(name) for name in settings["test_fns"]}
        chains, diverged = run.chains, run.diverged
    else:
        run = (ensemble.run(problem, settings["rule"], steps=steps, keep_states=False, **common)
               if side == "discrete" else
               sde.simulate(problem, settings["rule"], keep_states=False, **sde_options, **common))
        reduction = {name: 1.0 for name in settings["test_fns"]}
        chains, diverged = run.chains, run.diverged_count
    return {"moments": [{"test_fn": name, **moments_json(run.moments[name]),
                         "variance_reduction": reduction[name]} for name in settings["test_fns"]],
            "chains": [{"chains": chains, "diverged": diverged}]}


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
                              name=f"{algorithm} m={micro} lam={lam} eta={eta:g} rho={rho} {side}")
            for side in sides(algorithm)}


def point_rows(settings: dict[str, Any], point: tuple,
               records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The weak-error rows of one setting from its tasks' records (by side), blocks pooled:
    one per test function and SDE variant, as :func:`compare.compare_algorithm` gives them."""
    sweep, algorithm, micro, lam, eta, rho = point

    def pooled(side: str) -> tuple[dict[str, Any], int, dict[str, float]]:
        parts = [record["results"] for record in records[side]]
        of = {name: [next(m for m in part["moments"] if m["test_fn"] == name) for part in parts]
              for name in settings["test_fns"]}
        moments = {name: pool_moments(values) for name, values in of.items()}
        reduction = {name: sum(v["variance_reduction"] for v in values) / len(values)
                     for name, values in of.items()}
        return moments, sum(part["chains"][0]["diverged"] for part in parts), reduction

    reference, reference_diverged, reference_reduction = pooled("discrete")
    recorded = recorded_steps(round(settings["horizon"] / eta), 1)
    rows = []
    for variant in sides(algorithm)[1:]:
        moments, diverged, reduction = pooled(variant)
        for name in settings["test_fns"]:
            row = {"rule": get_rule(algorithm).name, "micro": micro, "lam": lam,
                   "batch": settings["batch"], "eta": eta, "rho": rho,
                   "dt": eta / settings["substeps"], "test_fn": name, "variant": variant,
                   **compare.weak_error(reference[name], moments[name]),
                   "chains": settings["chains"], "diverged": reference_diverged + diverged,
                   "discrete_diverged": reference_diverged, "sde_diverged": diverged,
                   "control_variates": settings["control_variates"],
                   "discrete_variance_reduction": reference_reduction[name],
                   "sde_variance_reduction": reduction[name]}
            row["argmax_step"] = recorded[row.pop("argmax_record")]
            rows.append({**row, "sweep": sweep})
    return rows


def memory_parts(settings: dict[str, Any], problem: LogisticRegression) -> list[memory.Part]:
    """The memory of the largest comparison of the sweeps (one block of ``chunk`` chains with
    running moments: :func:`sdesam.simulation.compare.comparison_parts`)."""
    candidates = [compare.comparison_parts(
        problem, algorithm, eta=eta, rho=rho, batch=settings["batch"], micro=micro, lam=lam,
        horizon=settings["horizon"], chains=settings["chains"], chunk=settings["chunk"],
        test_fns=settings["test_fns"], sampling=settings["sampling"], chains_argument="--chains",
        keep_states=settings["control_variates"])
        for _, algorithm, micro, lam, eta, rho in sweep_points(settings)]
    return max(candidates, key=lambda parts: sum(part.nbytes for part in parts))


def _groups(rows: list[dict[str, Any]], test_fn: str) -> dict[tuple, list[dict[str, Any]]]:
    """The coupled sweep's rows of ``test_fn`` by (rule, micro, lam, variant), eta ascending."""
    coupled = [r for r in rows if r["sweep"] == "coupled" and r["test_fn"] == test_fn]
    keys = dict.fromkeys((r["rule"], r["micro"], r["lam"], r["variant"]) for r in coupled)
    return {key: sorted((r for r in coupled if (r["rule"], r["micro"], r["lam"], r["variant"])
                         == key), key=lambda r: r["eta"]) for key in keys}


def fitted_orders(rows: list[dict[str, Any]], test_fn: str) -> list[dict[str, Any]]:
    """Order in eta of ``test_fn``'s weak error along the rho = kappa sqrt(eta) sweep: the
    least-squares slope over every eta and the local order between the two smallest, each
    with its 95% Monte-Carlo interval (:func:`compare.fit_order` with the standard errors);
    one record per run, SDE variant and measure (max over steps, at T)."""
    orders = []
    for (algorithm, micro, lam, variant), group in _groups(rows, test_fn).items():
        etas = [r["eta"] for r in group]
        for measure, field in (("max_over_steps", "weak_error"), ("at_horizon", "weak_error_T")):
            errors = [r[field] for r in group]
            stderrs = [r[field + "_stderr"] for r in group]
            fit = compare.fit_order(etas, errors, stderrs=stderrs)
            local = compare.fit_order(etas[:2], errors[:2], stderrs=stderrs[:2])
            orders.append({"rule": algorithm, "micro": micro, "lam": lam, "variant": variant,
                           "measure": measure, "test_fn": test_fn, "order": fit["order"],
                           "order_ci_low": fit["ci_low"], "order_ci_high": fit["ci_high"],
                           "min_signal": fit["min_signal"], "intercept": fit["intercept"],
                           "local_order": local["order"], "local_order_ci_low": local["ci_low"],
                           "local_order_ci_high": local["ci_high"],
                           "local_etas": f"{etas[0]:g}-{etas[1]:g}", "points": len(group),
                           "chains": group[0]["chains"],
                           "diverged": sum(r["diverged"] for r in group)})
    return orders


def predicted_coefficients(problem: LogisticRegression, settings: dict[str, Any]
                           ) -> dict[tuple, float]:
    """Per run ``(rule, micro, lam)``, the sqrt(eta) coefficient that dropping the noise-induced
    term must leave in the signed error at T of the order test function: the first-order
    response of the noiseless flow to that term (:mod:`sdesam.simulation.linear_response`)."""
    name = settings["order_test_fn"]
    return {(rule, micro, lam): linear_response.predicted_sqrt_coefficient(
        problem, rule, kappa=settings["kappa"], batch=settings["batch"], micro=micro, lam=lam,
        x0=settings["x0"], horizon=settings["horizon"], sampling=settings["sampling"],
        test_fns=(name,))[name] for rule, micro, lam in settings["runs"]}


def fitted_expansions(rows: list[dict[str, Any]], test_fn: str,
                      predicted: dict[tuple, float]) -> list[dict[str, Any]]:
    """The signed error at T of ``test_fn`` along the rho = kappa sqrt(eta) sweep fitted as
    ``a sqrt(eta) + b eta + c eta^{3/2}`` (two terms with three etas) by least squares weighted
    by the standard errors (:func:`exact_expansion.fit_expansion`), with 95% intervals of a and
    b: a = 0 is expected with the noise-induced term, a = ``predicted_a`` (from ``predicted``,
    :func:`predicted_coefficients`) without it. Two terms alone leave the curvature of the
    larger etas in a (the exact table shows it too), so the two-term a is kept only for
    comparison. The fit's a carries a bias from the terms it truncates, which the full SDE's a
    shows; the record without the term also gets ``a_minus_full``, its a less the full SDE's,
    where that bias cancels, with a 95% interval from the two standard errors added in
    quadrature (conservative: the two fits share the discrete side, so their errors are
    positively correlated). One record per run and SDE variant."""
    z = normal_quantile(0.95)
    out = []
    a_stderr: dict[tuple, float] = {}
    for (algorithm, micro, lam, variant), group in _groups(rows, test_fn).items():
        etas, signed = [r["eta"] for r in group], [r["error_T"] for r in group]
        stderrs = [r["weak_error_T_stderr"] for r in group]
        terms = min(3, len(etas) - 1)             # a quick run's three etas: two terms
        fit = exact_expansion.fit_expansion(etas, signed, terms, stderrs=stderrs)
        two = exact_expansion.fit_expansion(etas, signed, 2, stderrs=stderrs)
        out.append({"rule": algorithm, "micro": micro, "lam": lam, "variant": variant,
                    "test_fn": test_fn, "terms": terms, "a": fit["a"],
                    "a_ci_low": fit["a"] - z * fit["a_stderr"],
                    "a_ci_high": fit["a"] + z * fit["a_stderr"], "b": fit["b"],
                    "b_ci_low": fit["b"] - z * fit["b_stderr"],
                    "b_ci_high": fit["b"] + z * fit["b_stderr"], "c": fit["c"],
                    "chi2_per_dof": fit["chi2_per_dof"], "a_two_term": two["a"],
                    "a_two_term_stderr": two["a_stderr"],
                    "chi2_per_dof_two_term": two["chi2_per_dof"], "points": len(group),
                    "chains": group[0]["chains"],
                    "predicted_a": predicted[algorithm, micro, lam] if compare.VARIANTS[variant]
                    else 0.0})
        a_stderr[algorithm, micro, lam, variant] = fit["a_stderr"]
    full = {(r["rule"], r["micro"], r["lam"]): r for r in out if r["variant"] == "full"}
    for row in out:
        key = (row["rule"], row["micro"], row["lam"])
        if compare.VARIANTS[row["variant"]] and key in full:
            gap = row["a"] - full[key]["a"]
            half = z * (a_stderr[(*key, row["variant"])] ** 2 + a_stderr[(*key, "full")] ** 2) ** 0.5
            row.update({"a_minus_full": gap, "a_minus_full_ci_low": gap - half,
                        "a_minus_full_ci_high": gap + half})
    return out


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
    parser.add_argument("--plain", action="store_true",
                        help="plain Monte Carlo: no control variates (diverged chains are then "
                             "counted and left out instead of refused)")
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
        settings["seed"] = validation.seed("--seed", args.seed)
    if args.plain:
        settings["control_variates"] = False
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
                    record["metadata"]["cpu_time_s"] for record in records.values()),
                "tasks_wall_time_s": sum(
                    record["metadata"]["wall_time_s"] for record in records.values())}
    orders = fitted_orders(rows, settings["order_test_fn"])
    expansions = fitted_expansions(rows, settings["order_test_fn"],
                                   predicted_coefficients(problem, settings))
    record = make_record(settings, {"weak_errors": rows, "orders": orders,
                                    "expansions": expansions}, metadata)
    for path in publish(record, out):
        print(path)
    print_headline("sde_vs_discrete", [
        *[(f"{rule_name(row)} {row['variant']} {row['measure']}",
           f"order {interval(row['order'], row['order_ci_low'], row['order_ci_high'])} (95% CI)")
          for row in orders],
        *[(f"{rule_name(row)} a without the term - a full (x1e3)",
           f"{interval(1e3 * row['a_minus_full'], 1e3 * row['a_minus_full_ci_low'], 1e3 * row['a_minus_full_ci_high'])}"
           f" (95% CI), predicted {1e3 * row['predicted_a']:.3g}")
          for row in expansions if "a_minus_full" in row],
        ("chains per side", f"{settings['chains']}, {sum(r['diverged'] for r in rows)} diverged; "
                            f"wall {metadata['wall_time_s']:.0f} s, tasks' CPU "
                            f"{metadata['tasks_cpu_time_s']:.0f} s ({len(unique)} tasks, {where})")])
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("sde_vs_discrete", lambda: main()))
