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
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import sympy
import torch
from sdesam.progress import progress_bar

from sdesam import algorithms, problems, validation
from sdesam.simulation import compare, ensemble, memory
from sdesam.algorithms import Rule
from sdesam.simulation.brownian import FixedGridBrownian
from sdesam.simulation.chains import ChainRun
from sdesam.simulation.derived_sde import DerivedSDE, integration_grid, noise_factor
from sdesam.simulation.ensemble import start_points
from sdesam.simulation.sde import euler_maruyama
from sdesam.cli import guarded
from sdesam.experiment.arguments import check_device, experiment_parser, prepare_out
from sdesam.experiment.headline import estimate, print_headline
from sdesam.experiment.records import make_record, run_metadata, write_json
from sdesam.symbolic import Derivation, derive, eta as ETA, example_losses

SCALED_USAM = Rule("scaled-usam", "part", False, False,
                   "G = grad f_B(x + rho s(x) * grad f_B(x)), s(x) = x^2 + 1",
                   label="scaled USAM", scale=lambda xk: xk**2 + 1, sde=False, optimizer=False)
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


def chunked_final_values(sample, problem, test_fns, chains: int, chunk: int, seed: int,
                         ) -> dict[str, torch.Tensor]:
    """Per chain, ``sum_j w_j g(x_T^(j))`` for each test function g, drawn chunk by chunk with
    ``sample(chunk_seed, size) -> (states [J, size, d], weights [J])`` (the same chunk seeds
    give the same chains; J = 1 for a plain estimate, 2 for a Richardson pair)."""
    values: dict[str, list[torch.Tensor]] = {name: [] for name in test_fns}
    done = 0
    while done < chains:
        size = min(chunk, chains - done)
        states, weights = sample(seed * 100_003 + done, size)
        for name in test_fns:
            per_state = compare.TEST_FUNCTIONS[name](problem, states)
            values[name].append(torch.einsum("j,jc->c", weights.to(per_state), per_state).cpu())
        done += size
    return {name: torch.cat(parts) for name, parts in values.items()}


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


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error over the finite entries."""
    finite = values[values.isfinite()]
    return float(finite.mean()), float(finite.std() / math.sqrt(finite.numel()))


def measure_run(problem, losses, variables, algorithm: str, micro: int | None, eta: float,
                rho: float, settings: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """The weak-error rows of one rule at one (eta, rho), every variant and test function."""
    common = dict(batch=settings["batch"], micro=micro, sampling=settings["sampling"])
    first = derive(algorithm, losses, variables, order=1, diffusion_order=0, **common)
    second = derive(algorithm, losses, variables, order=2, diffusion_order=1, **common)
    x0 = torch.tensor(settings["x0"], dtype=torch.float64)
    horizon, test_fns = settings["horizon"], settings["test_fns"]

    def discrete(chunk_seed: int, size: int) -> torch.Tensor:
        final = live_final(ensemble.run(problem, algorithm, eta=eta, rho=rho, x0=x0,
                                        steps=round(horizon / eta), chains=size,
                                        seed=chunk_seed, device=device, every=None,
                                        keep_states=False, **common))
        return final.unsqueeze(0), torch.ones(1)

    reference = chunked_final_values(discrete, problem, test_fns, settings["chains"],
                                     settings["chunk"], settings["seed"])
    finals, clipped = {}, {}
    for variant in VARIANTS:
        sde = DerivedSDE(variant_derivation(first, second, variant), eta=eta, rho=rho)

        def continuous(chunk_seed: int, size: int) -> torch.Tensor:
            return richardson_final(sde, x0, horizon, size, chunk_seed, settings["substeps"],
                                    device)

        finals[variant] = chunked_final_values(continuous, problem, test_fns, settings["chains"],
                                               settings["chunk"], settings["seed"] + 1)
        clipped[variant] = sde.clipped / sde.evaluations
    rows = []
    for name in test_fns:
        target, target_stderr = mean_and_stderr(reference[name])
        base = finals["first_order"][name]
        for variant in VARIANTS:
            values = finals[variant][name]
            mean, stderr = mean_and_stderr(values)
            bias = target - mean
            paired = values - base
            change, change_stderr = mean_and_stderr(paired) if variant != "first_order" else (0.0, 0.0)
            rows.append({
                "algorithm": algorithm, "micro": micro, "batch": settings["batch"], "eta": eta,
                "rho": rho, "test_fn": name, "variant": variant,
                "discrete_mean": target, "discrete_mean_stderr": target_stderr,
                "sde_mean": mean, "sde_mean_stderr": stderr,
                "bias": bias, "weak_error": abs(bias),
                "weak_error_stderr": math.hypot(target_stderr, stderr),
                "shift_vs_first_order": change, "shift_vs_first_order_stderr": change_stderr,
                "chains": settings["chains"],
                "diverged": int((~reference[name].isfinite()).sum() + (~values.isfinite()).sum()),
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
    """What a run with ``settings`` holds at its peak: every chain's end value of each test
    function for the discrete rule and every variant, and one block of ``chunk`` chains of the
    discrete ensemble (the SDE blocks hold no more: d Brownian channels and only end points)."""
    chains, kept = settings["chains"], len(settings["test_fns"]) * (1 + len(VARIANTS))
    steps = max(round(settings["horizon"] / eta) for eta, _ in settings["points"])
    values = memory.Part(f"every chain's end values ({kept} per chain)", "--chains", chains,
                         2 * 8 * kept * chains, "lower --chains")        # the parts and their cat
    return [values, *ensemble.run_parts(problem, batch=settings["batch"],
                                        sampling=settings["sampling"], steps=steps,
                                        chains=settings["chunk"], every=None, keep_states=False,
                                        chains_argument="--chains")]


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and write the record."""
    parser = experiment_parser(__doc__, "small settings (under a minute on one CPU core)",
                               cache=False)
    parser.set_defaults(out=None)
    parser.add_argument("--chains", type=int, default=None, help="override the chain count")
    args = parser.parse_args(argv)
    check_device(args.device)
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
    rows = []
    with algorithms.registered(SCALED_USAM):
        jobs = [(a, m, eta, rho) for a, m in settings["runs"] for eta, rho in settings["points"]]
        for algorithm, micro, eta, rho in progress_bar(jobs, desc="rules", show=not args.no_progress):
            rows += measure_run(problem, losses, variables, algorithm, micro, eta, rho,
                                settings, args.device)
    costs = sqrt_costs(settings["cost_dims"], settings["cost_chains"], args.seed)
    metadata = {**run_metadata(args.device), "wall_time_s": time.time() - start,
                "cpu_time_s": time.process_time() - cpu_start}
    path = write_json(out / "sde_corrections.json",
                      make_record(settings, {"weak_error": rows, "sqrt_cost": costs}, metadata))
    print(path)
    print_headline("sde_corrections", headline_rows(rows, costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("sde_corrections", lambda: main()))
