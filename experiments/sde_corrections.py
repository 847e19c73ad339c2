"""Do the derived second-order terms bring the SDE closer to the discrete rule?

For USAM, m-USAM and a user-defined elementwise-scaled USAM (perturbation ``rho (x^2 + 1) *
grad f_B``) on the non-quadratic example losses of :func:`sdesam.symbolic.example_losses`
(2-D, N = 4, tr V varies with x), the SDE compiled from the derivation
(:mod:`sdesam.simulation.derived_sde`) is simulated in variants

* ``first_order``   -- drift to O(rho), diffusion ``c V``;
* ``eta_correction`` -- plus the drift's eta term ``-(eta/2) J(E G) E G`` (of the order-2 drift);
* ``rho_diffusion`` -- plus the O(rho) correction of the diffusion Sigma;
* ``both``          -- both corrections;
* ``second_order``  -- the whole order-2 drift (eta term and O(rho^2)) with the O(rho) diffusion,

and its weak error ``|E g(x_T) - E g(X_T)|`` at the horizon T against the discrete ensemble
(``sdesam.simulation.ensemble.run``) is measured for the test functions of :mod:`sdesam.simulation.compare`, with
Monte-Carlo standard errors. The SDEs are integrated by Euler-Maruyama at ``dt = eta/substeps``
and ``dt/2`` on one Brownian path and Richardson-extrapolated (``2 E_{dt/2} - E_dt``), so the
integrator's O(dt) bias -- of the same size as the eta correction being measured -- is removed.
All variants share one Brownian path per chain (common random numbers), so the shift of a
variant's mean against ``first_order`` has a much smaller standard error (paired, per-chain
differences) than either weak error; where the bias keeps its sign, the change of the weak
error is that shift.

Also measured: the cost of the diffusion's square root (Cholesky with the eigen fallback used
by :func:`sdesam.simulation.derived_sde.noise_factor`, against a batched eigendecomposition of every
matrix) for d = 2, 4, 8. Writes ``OUT/sde_corrections.json`` (the one record schema).

A task is one block of ``chunk`` chains of one rule at one (eta, rho): of the discrete ensemble,
or of every SDE variant (on one Brownian path per chain, so the variants' shifts stay paired);
``chains`` split into blocks with their own seeds (from the task's settings and ``--seed``),
whose moments are pooled. Tasks run in parallel (``--jobs``, ``--scheduler``) and write
``OUT/tasks/<key>.json``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Iterator

import sympy
import torch

from sdesam import algorithms, problems, validation
from sdesam.simulation import compare, ensemble, memory
from sdesam.algorithms import Rule
from sdesam.simulation.brownian import FixedGridBrownian
from sdesam.simulation.chains import ChainRun, Moments
from sdesam.simulation.derived_sde import DerivedSDE, integration_grid, noise_factor
from sdesam.simulation.ensemble import start_points
from sdesam.simulation.sde import euler_maruyama
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
from sdesam.experiment.executor import add_executor_arguments, check_executor_arguments, run_sweep
from sdesam.experiment.headline import estimate, print_headline
from sdesam.experiment.records import make_record, run_metadata, write_json
from sdesam.experiment.tasks import block_tasks, exits_on_task_failure, moments_json, pool_moments
from sdesam.symbolic import Derivation, derive, eta as ETA, example_losses

SCALED_USAM = Rule("scaled-usam", "part", False, False,
                   "G = grad f_B(x + rho s(x) * grad f_B(x)), s(x) = x^2 + 1",
                   label="scaled USAM", scale=lambda xk: xk**2 + 1)
"""The user-defined rule of the experiment (registered only while it runs)."""

VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    # name: (eta correction, O(rho) diffusion, O(rho^2) drift)
    "first_order": (False, False, False),
    "eta_correction": (True, False, False),
    "rho_diffusion": (False, True, False),
    "both": (True, True, False),
    "second_order": (True, True, True),
}

DEFAULT = {"dim": 2, "x0": [1.0, -0.5], "batch": 4, "sampling": "with-replacement",
           "runs": [["usam", None], ["m-usam", 1], ["scaled-usam", None]],
           "points": [[0.1, 0.2]], "horizon": 1.0, "substeps": 2, "chains": 40000,
           "chunk": 20000, "test_fns": ["loss", "sq_norm", "coord0", "trace_V"],
           "cost_dims": [2, 4, 8], "cost_chains": 100000}
QUICK = {"runs": [["usam", None], ["scaled-usam", None]], "chains": 10000, "chunk": 10000,
         "cost_dims": [2, 4], "cost_chains": 20000}


def variant_derivation(first: Derivation, second: Derivation, variant: str) -> Derivation:
    """The derivation whose compiled SDE is ``variant`` (see :data:`VARIANTS`), assembled from
    the order-1 (``diffusion_order=0``) and order-2 (``diffusion_order=1``) derivations."""
    eta_term, rho_diffusion, rho2_drift = VARIANTS[variant]
    if rho2_drift:
        drift = second.drift
    else:
        drift = first.drift
        if eta_term:
            drift = drift + (second.drift - second.drift.subs(ETA, 0)).applyfunc(sympy.expand)
    diffusion = second.diffusion if rho_diffusion else first.diffusion
    return dataclasses.replace(second, drift=drift, diffusion=diffusion)


class CoarsenedBrownian:
    """The Brownian path of ``fine`` seen on every second point of its grid (increments are
    sums of two fine ones), so Euler-Maruyama at dt and dt/2 run on the same path."""

    def __init__(self, fine: FixedGridBrownian) -> None:
        self.fine, self.times, self.shape = fine, fine.times[::2], fine.shape

    def increment(self, k: int) -> torch.Tensor:
        """``W(t_{k+1}) - W(t_k)`` on the coarse grid."""
        return self.fine.increment(2 * k) + self.fine.increment(2 * k + 1)


def richardson_final(sde: DerivedSDE, x0: torch.Tensor, horizon: float, chains: int, seed: int,
                     substeps: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The Euler-Maruyama end points at ``dt/2`` and ``dt = eta / substeps`` on one Brownian
    path, with the Richardson weights (2, -1): ``2 E g(X^{dt/2}_T) - E g(X^{dt}_T)`` has no
    O(dt) integrator bias, and pairing the two paths keeps its Monte-Carlo error small."""
    grid, _ = integration_grid(sde.eta, horizon, sde.eta / (2 * substeps))
    y0 = start_points(x0, chains, sde.dim, device)
    fine = FixedGridBrownian(grid, (chains, sde.dim), seed, dtype=y0.dtype, device=y0.device)
    fine_end = live_final(euler_maruyama(sde, y0, fine, record_every=grid.numel() - 1,
                                         every=None, keep_states=False))
    coarse_end = live_final(euler_maruyama(sde, y0, CoarsenedBrownian(fine),
                                           record_every=(grid.numel() - 1) // 2, every=None,
                                           keep_states=False))
    return torch.stack([fine_end, coarse_end]), torch.tensor([2.0, -1.0])


def live_final(run: ChainRun) -> torch.Tensor:
    """The end states of a run with its diverged chains set to NaN, so that every statistic
    (taken over finite values) leaves them out and counts them."""
    final = run.final.clone()
    final[run.diverged] = math.nan
    return final


TASK_KEYS = ("dim", "x0", "batch", "sampling", "horizon", "substeps", "test_fns", "device")
"""The settings every task shares (the problem, the start, the horizon and the integrator)."""


@contextlib.contextmanager
def user_rules(algorithm: str) -> Iterator[None]:
    """The experiment's user-defined rule registered while ``algorithm`` needs it (in whatever
    process the task runs)."""
    if algorithm != SCALED_USAM.name:
        yield
        return
    with algorithms.registered(SCALED_USAM):
        yield


def value_moments(values: torch.Tensor, prefix: str = "") -> dict[str, Any]:
    """Count, mean and variance of the finite entries of ``values`` (a diverged chain holds
    NaN), as flat fields ``{prefix}mean, {prefix}var, {prefix}count``."""
    finite = values[values.isfinite()].to(torch.float64).cpu()
    count = finite.numel()
    mean = float(finite.mean()) if count else math.nan
    var = float(finite.var()) if count > 1 else (0.0 if count else math.nan)
    moments = moments_json(Moments(torch.tensor([mean], dtype=torch.float64),
                                   torch.tensor([var], dtype=torch.float64),
                                   torch.tensor([count])))
    return {f"{prefix}{key}": value for key, value in moments.items()}


def discrete_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Moments of ``g(x_K)`` for each test function g over one block of chains of the discrete
    ensemble of one rule at one (eta, rho): one task of the measurement."""
    losses, variables = example_losses(settings["dim"])
    problem = problems.from_sympy(losses, variables)
    eta = settings["eta"]
    with user_rules(settings["rule"]):
        final = live_final(ensemble.run(
            problem, settings["rule"], eta=eta, rho=settings["rho"],
            x0=torch.tensor(settings["x0"], dtype=torch.float64),
            steps=round(settings["horizon"] / eta), chains=settings["chains"], seed=seed,
            device=settings["device"], every=None, keep_states=False, batch=settings["batch"],
            micro=settings["micro"], sampling=settings["sampling"]))
    return {"values": [{"test_fn": name,
                        **value_moments(compare.TEST_FUNCTIONS[name](problem, final))}
                       for name in settings["test_fns"]]}


def sde_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """For every SDE variant, on one Brownian path per chain of one block: moments of the
    Richardson-extrapolated ``g(X_T)`` for each test function g, of its per-chain shift
    against ``first_order``, and the clipped fraction of the diffusion: one task."""
    losses, variables = example_losses(settings["dim"])
    problem = problems.from_sympy(losses, variables)
    algorithm, eta, rho = settings["rule"], settings["eta"], settings["rho"]
    common = dict(batch=settings["batch"], micro=settings["micro"], sampling=settings["sampling"])
    x0 = torch.tensor(settings["x0"], dtype=torch.float64)
    finals, rows = {}, []
    with user_rules(algorithm):
        first = derive(algorithm, losses, variables, order=1, diffusion_order=0, **common)
        second = derive(algorithm, losses, variables, order=2, diffusion_order=1, **common)
        for variant in VARIANTS:
            sde = DerivedSDE(variant_derivation(first, second, variant), eta=eta, rho=rho)
            states, weights = richardson_final(sde, x0, settings["horizon"], settings["chains"],
                                               seed, settings["substeps"], settings["device"])
            finals[variant] = {}
            for name in settings["test_fns"]:
                per_state = compare.TEST_FUNCTIONS[name](problem, states)
                finals[variant][name] = torch.einsum("j,jc->c", weights.to(per_state),
                                                     per_state).cpu()
            for name in settings["test_fns"]:
                values = finals[variant][name]
                shift = values - finals["first_order"][name]
                rows.append({"variant": variant, "test_fn": name, **value_moments(values),
                             **value_moments(shift, "shift_"), "clipped": int(sde.clipped),
                             "evaluations": int(sde.evaluations)})
    return {"values": rows}


def run_tasks_of(settings: dict[str, Any], algorithm: str, micro: int | None, eta: float,
                 rho: float) -> dict[str, list[Any]]:
    """The tasks of one rule at one (eta, rho), by side (``discrete``, ``sde``): a block of
    ``chunk`` chains each."""
    base = {"experiment": "sde_corrections", **{key: settings[key] for key in TASK_KEYS},
            "rule": algorithm, "micro": micro, "eta": eta, "rho": rho}
    label = f"{algorithm} m={micro} eta={eta:g} rho={rho:g}"
    return {side: block_tasks(function, {**base, "side": side}, chains=settings["chains"],
                              block=settings["chunk"], sweep_seed=settings["seed"],
                              name=f"{label} {side}")
            for side, function in (("discrete", discrete_task), ("sde", sde_task))}


def measure_rows(settings: dict[str, Any], algorithm: str, micro: int | None, eta: float,
                 rho: float, records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The weak-error rows of one rule at one (eta, rho), every variant and test function,
    from its tasks' records (by side), the blocks pooled."""
    chains = settings["chains"]

    def pooled(side: str, variant: str | None, name: str, prefix: str = "") -> Moments:
        return pool_moments([{key: row[f"{prefix}{key}"] for key in ("mean", "var", "count")}
                             for record in records[side] for row in record["results"]["values"]
                             if row["test_fn"] == name and row.get("variant") == variant])

    def mean_and_stderr_of(moments: Moments) -> tuple[float, float]:
        count = int(moments.count[0])
        return float(moments.mean[0]), math.sqrt(float(moments.var[0]) / count) if count else math.nan

    clipped = {variant: sum(row["clipped"] for record in records["sde"]
                            for row in record["results"]["values"]
                            if row["variant"] == variant and row["test_fn"] == settings["test_fns"][0])
               / max(1, sum(row["evaluations"] for record in records["sde"]
                            for row in record["results"]["values"]
                            if row["variant"] == variant and row["test_fn"] == settings["test_fns"][0]))
               for variant in VARIANTS}
    rows = []
    for name in settings["test_fns"]:
        reference = pooled("discrete", None, name)
        target, target_stderr = mean_and_stderr_of(reference)
        for variant in VARIANTS:
            values = pooled("sde", variant, name)
            mean, stderr = mean_and_stderr_of(values)
            bias = target - mean
            change, change_stderr = (mean_and_stderr_of(pooled("sde", variant, name, "shift_"))
                                     if variant != "first_order" else (0.0, 0.0))
            rows.append({
                "algorithm": algorithm, "micro": micro, "batch": settings["batch"], "eta": eta,
                "rho": rho, "test_fn": name, "variant": variant,
                "discrete_mean": target, "discrete_mean_stderr": target_stderr,
                "sde_mean": mean, "sde_mean_stderr": stderr,
                "bias": bias, "weak_error": abs(bias),
                "weak_error_stderr": math.hypot(target_stderr, stderr),
                "shift_vs_first_order": change, "shift_vs_first_order_stderr": change_stderr,
                "chains": chains,
                "diverged": int(2 * chains - reference.count[0] - values.count[0]),
                "clipped_fraction": clipped[variant]})
    return rows


def sqrt_costs(dims: list[int], chains: int, seed: int, repeats: int = 3) -> list[dict[str, Any]]:
    """Seconds per call of the square root of ``chains`` random SPD d x d matrices: the
    Cholesky-with-eigen-fallback of :func:`noise_factor` against eigh of every matrix."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for d in dims:
        a = torch.randn(chains, d, d, dtype=torch.float64, generator=generator)
        sigma = a @ a.transpose(-1, -2) / d + 1e-3 * torch.eye(d, dtype=torch.float64)
        timings = {}
        for method, fn in (("cholesky_with_fallback", noise_factor),
                           ("eigh_all", torch.linalg.eigh)):
            fn(sigma)
            start = time.perf_counter()
            for _ in range(repeats):
                fn(sigma)
            timings[method] = (time.perf_counter() - start) / repeats
        rows.append({"dim": d, "chains": chains, **{f"{k}_s": v for k, v in timings.items()},
                     "eigh_over_cholesky": timings["eigh_all"] / timings["cholesky_with_fallback"]})
    return rows


def headline_rows(rows: list[dict[str, Any]], costs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The weak error of E loss of every rule, setting and variant, with its shift against the
    first-order SDE, and the cost of the diffusion's square root."""
    lines = [(f"{r['algorithm']} eta={r['eta']:g} rho={r['rho']:g} {r['variant']}",
              f"loss weak error {estimate(r['weak_error'], r['weak_error_stderr'])}"
              + ("" if r["variant"] == "first_order" else ", shift " + estimate(
                  r["shift_vs_first_order"], r["shift_vs_first_order_stderr"])))
             for r in rows if r["test_fn"] == "loss"]
    lines += [(f"sqrt of {c['chains']} {c['dim']}x{c['dim']} matrices",
               f"Cholesky+fallback {c['cholesky_with_fallback_s']:.4f} s, eigh {c['eigh_all_s']:.4f} s "
               f"(x{c['eigh_over_cholesky']:.1f})") for c in costs]
    return lines


def memory_parts(settings: dict[str, Any], problem: problems.Problem) -> list[memory.Part]:
    """What a task holds at its peak: the end values of each test function of every variant
    and their shifts over its block of ``chunk`` chains, and the discrete ensemble of such a
    block (the SDE blocks hold no more: d Brownian channels and only end points)."""
    block, kept = settings["chunk"], len(settings["test_fns"]) * (2 * len(VARIANTS) + 1)
    steps = max(round(settings["horizon"] / eta) for eta, _ in settings["points"])
    values = memory.Part(f"a block's end values ({kept} per chain)", "--chains", block,
                         2 * 8 * kept * block, "lower --chains")
    return [values, *ensemble.run_parts(problem, batch=settings["batch"],
                                        sampling=settings["sampling"], steps=steps,
                                        chains=settings["chunk"], every=None, keep_states=False,
                                        chains_argument="--chains")]


@exits_on_task_failure("sde_corrections")
def main(argv: list[str] | None = None) -> int:
    """Run the measurement and write the record."""
    parser = experiment_parser(__doc__, "small settings (under a minute on one CPU core)",
                               cache=False)
    parser.set_defaults(out=None)
    parser.add_argument("--chains", type=int, default=None, help="override the chain count")
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    check_device(args.device)
    where = check_executor_arguments(args)
    settings = {**DEFAULT, **(QUICK if args.quick else {}), "experiment": "sde_corrections",
                "quick": args.quick, "device": args.device, "seed": args.seed}
    if args.chains is not None:
        settings["chains"] = validation.positive_int("--chains", args.chains)
        settings["chunk"] = min(settings["chunk"], settings["chains"])
    losses, variables = example_losses(settings["dim"])
    problem = problems.from_sympy(losses, variables)
    memory.require(memory_parts(settings, problem), args.device)
    out = prepare_out(args, "sde_corrections")
    start, cpu_start = time.time(), time.process_time()
    cells = [(a, m, eta, rho) for a, m in settings["runs"] for eta, rho in settings["points"]]
    tasks = [run_tasks_of(settings, *cell) for cell in cells]
    every = [task for sides in tasks for side in sides.values() for task in side]
    print(f"{len(every)} tasks on {where}", flush=True)
    records = dict(zip((task.key for task in every),
                       run_sweep(every, args, out / "tasks", desc="sde_corrections tasks")))
    rows = []
    for cell, sides in zip(cells, tasks):
        rows += measure_rows(settings, *cell, {side: [records[task.key] for task in side_tasks]
                                               for side, side_tasks in sides.items()})
    costs = sqrt_costs(settings["cost_dims"], settings["cost_chains"], args.seed)
    metadata = {**run_metadata(args.device), "wall_time_s": time.time() - start,
                "cpu_time_s": time.process_time() - cpu_start, "executor": where,
                "tasks": len(every), "tasks_cpu_time_s": sum(
                    record["metadata"]["cpu_time_s"] for record in records.values())}
    path = write_json(out / "sde_corrections.json",
                      make_record(settings, {"weak_error": rows, "sqrt_cost": costs}, metadata))
    print(path)
    print_headline("sde_corrections", headline_rows(rows, costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("sde_corrections", lambda: main()))
