"""Costs of the simulation layer, old way against new way, measured as ratios in one run.

Three measurements (m-USAM, B = 4, m = 2, on least squares; float64; ``--threads`` CPU threads):

1. **Ensemble against SDE, per step**, on a grid of sizes (d x chains, 100 to 1e4 chains, N =
   16): the discrete ensemble's step (old: every micro-batch gradient by a VJP through all N
   samples; new: :func:`sdesam.simulation.ensemble.run`, gathering the chosen samples' rows of the
   per-sample gradients) against the SDE fast path (:func:`sdesam.simulation.sde.euler_maruyama`, one
   cell per step). Done when new ensemble / SDE <= 1.2 everywhere.
2. **SDE per chain-step** at N = 8, d = 2 and N = 64, d = 20 with 1e4 chains: the old fast path
   (whole ``[chains, N, d]`` temporaries each step, the path kept as a list and stacked)
   against the new one (cache-sized chunks of chains, only the end state kept).
3. **Peak memory** (peak RSS of a fresh process) of an SDE-vs-discrete comparison of end-time
   moments (discrete ensemble and SDE with dt = eta, test functions loss and tr V): the old way
   (both whole paths ``[steps+1, chains, d]`` kept, the SDE's as a list then stacked, the test
   functions evaluated on all of them) against the new (:func:`sdesam.simulation.compare.compare_algorithm`
   with ``every=None``: running moments only), at a size the old way survives; with
   ``--memory-full`` also the new way at 1e5 chains, d = 20, 1000 steps (``--full-steps``;
   about 570 s of CPU on the 2-core machine: the new way's peak does not depend on the steps).

The old code paths are kept, faithfully copied, in this file only, as the baselines
(:func:`old_ensemble_run`, :func:`old_euler_maruyama`, :func:`old_comparison`).
Usage: ``python experiments/benchmarks/bench_sde.py [--steps 10] [--repeats 5] [--memory-full]
[--out experiments/benchmarks]`` (default output: a fresh ``runs/bench_sde-*`` folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from sdesam.progress import progress_bar

from sdesam.simulation import compare, ensemble, sde
from sdesam import validation
from sdesam.simulation.brownian import FixedGridBrownian, time_grid
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.problems import LinearRegression
from sdesam.experiment.records import atomic_write, run_metadata

BATCH, MICRO, ETA, RHO = 4, 2, 0.01, 0.05
TEST_FNS = ("loss", "trace_V")


# ---------------------------------------------------------------------- the old code paths
def old_update_direction(problem, x, batch_idx):
    """m-USAM's direction as the old ensemble took it: each micro-batch gradient by one VJP
    through all N per-sample losses (``Problem.grad(points, parts)``)."""
    parts = batch_idx.unflatten(-1, (-1, MICRO))
    points = x.unsqueeze(-2).expand(*parts.shape[:-1], x.shape[-1])
    ascent = problem.grad(points, parts)
    return problem.grad(points + RHO * ascent, parts).mean(dim=-2)


def old_ensemble_run(problem, x0: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """The old :func:`sdesam.simulation.ensemble.run` loop: the whole path ``[steps+1, chains, d]`` kept."""
    x = x0.clone()
    chains = x.shape[0]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    path = torch.empty(steps + 1, chains, problem.dim, dtype=x.dtype, device=x.device)
    path[0] = x
    for k in range(steps):
        idx = ensemble.draw_batches(generator, chains, problem.n, BATCH, "with-replacement")
        x = x - ETA * old_update_direction(problem, x, idx)
        path[k + 1] = x
    return path


def old_euler_maruyama(model, y0: torch.Tensor, bm: FixedGridBrownian) -> torch.Tensor:
    """The old fast path: all chains at once each step, every state appended to a list, stacked."""
    times = bm.times
    path = [y0]
    y = y0
    for k in range(times.numel() - 1):
        drift, noise = model.f_and_g_prod(times[k], y, bm.increment(k))
        y = y + drift * float(times[k + 1] - times[k]) + noise
        path.append(y)
    return torch.stack(path)


def old_comparison(problem, chains: int, steps: int) -> dict[str, float]:
    """The old comparison's memory pattern: both whole paths, test functions on all of them."""
    x0 = torch.zeros(chains, problem.dim, dtype=torch.float64)
    model = sde.AlgorithmSDE(problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO)
    paths = [old_ensemble_run(problem, x0, steps, 0),
             old_euler_maruyama(model, x0, FixedGridBrownian(time_grid(steps * ETA, ETA),
                                                             (chains, problem.n), 1))]
    means = [{name: compare.TEST_FUNCTIONS[name](problem, path).mean(dim=1) for name in TEST_FNS}
             for path in paths]
    return {name: float((means[0][name][-1] - means[1][name][-1]).abs()) for name in TEST_FNS}


def new_comparison(problem, chains: int, steps: int, progress: bool = False) -> dict[str, float]:
    """The new comparison: running end-time moments only, chains in chunks of 1e5."""
    rows = compare.compare_algorithm(problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO,
                                     x0=[0.0] * problem.dim, horizon=steps * ETA, chains=chains,
                                     seed=0, test_fns=TEST_FNS, chunk=100_000, dt=ETA, every=None,
                                     variants=("full",), progress=progress)
    return {row["test_fn"]: row["weak_error_T"] for row in rows}


# ---------------------------------------------------------------------- measurements
def least_squares(n: int, dim: int) -> LinearRegression:
    """Least squares on ``n`` Gaussian examples in ``dim`` dimensions (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    return LinearRegression(torch.randn(n, dim, generator=gen, dtype=torch.float64),
                            torch.randn(n, generator=gen, dtype=torch.float64))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ensemble_against_sde(dim: int, chains: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per step of the old and new ensembles and of the SDE fast path."""
    problem = least_squares(16, dim)
    model = sde.AlgorithmSDE(problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO)
    x0 = torch.zeros(chains, dim, dtype=torch.float64)
    grid = time_grid(steps * ETA, ETA)
    with torch.no_grad():
        return {
            "old ensemble": best_time(lambda: old_ensemble_run(problem, x0, steps, 0), repeats) / steps,
            "new ensemble": best_time(lambda: ensemble.run(
                problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO, x0=x0, steps=steps,
                chains=chains, seed=0, keep_states=False, every=None), repeats) / steps,
            "SDE": best_time(lambda: sde.euler_maruyama(
                model, x0, FixedGridBrownian(grid, (chains, 16), 0), every=None,
                keep_states=False), repeats) / steps,
        }


def sde_chunking(n: int, dim: int, chains: int, steps: int, repeats: int) -> dict[str, float]:
    """Microseconds per chain-step of the old and new SDE fast paths."""
    problem = least_squares(n, dim)
    model = sde.AlgorithmSDE(problem, "m-usam", eta=ETA, rho=RHO, batch=BATCH, micro=MICRO)
    x0 = torch.zeros(chains, dim, dtype=torch.float64)
    bm = FixedGridBrownian(time_grid(steps * ETA, ETA), (chains, n), 0)
    with torch.no_grad():
        old = best_time(lambda: old_euler_maruyama(model, x0, bm), repeats)
        new = best_time(lambda: sde.euler_maruyama(model, x0, bm, every=None, keep_states=False),
                        repeats)
    return {"old": old / (chains * steps) * 1e6, "new": new / (chains * steps) * 1e6}


def peak_rss_of(way: str, chains: int, steps: int, threads: int) -> dict[str, Any]:
    """Peak RSS (MiB), wall and CPU seconds of one comparison in a fresh process."""
    code = (f"import json, resource, sys, time, torch; torch.set_num_threads({threads}); "
            f"sys.path[:0] = {sys.path[:1]!r}; "
            "import importlib.util as u; "
            f"spec = u.spec_from_file_location('bench', {str(Path(__file__).resolve())!r}); "
            "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
            "start, cpu = time.time(), time.process_time(); "
            f"errors = m.{way}_comparison(m.least_squares(16, 20), {chains}, {steps}"
            f"{', progress=True' if way == 'new' else ''}); "
            "print(json.dumps({'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'wall_s': time.time() - start, 'cpu_s': time.process_time() - cpu, 'errors': errors}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return {"peak_rss_mib": float("nan"), "wall_s": float("nan"), "cpu_s": float("nan"),
                "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements, print the table and write it to ``--out``/bench_sde.txt."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per measurement of parts 1 and 2 (the best is kept)")
    parser.add_argument("--sizes", default="2x100,2x1000,2x10000,100x100,100x1000,100x10000",
                        help="comma-separated DIMxCHAINS of the ensemble-vs-SDE grid")
    parser.add_argument("--memory-size", default="20000x200",
                        help="CHAINSxSTEPS of the old-vs-new memory comparison")
    parser.add_argument("--memory-full", action="store_true",
                        help="also run the new comparison at 1e5 chains, d = 20, --full-steps steps")
    parser.add_argument("--full-steps", default="1000",
                        help="comma-separated step counts of the --memory-full runs (the new "
                             "way keeps no per-step state, so its peak does not grow with them)")
    parser.add_argument("--out", default=None, help="folder for bench_sde.txt "
                        "(default: a fresh runs/bench_sde-* folder; the committed table: "
                        "--out experiments/benchmarks)")
    args = parser.parse_args(argv)
    validation.positive_int("--steps", args.steps)
    validation.positive_int("--threads", args.threads)
    validation.positive_int("--repeats", args.repeats)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    memory_chains, memory_steps = (int(v) for v in args.memory_size.split("x"))
    out = check_writable(resolve_out(args.out, "bench_sde"))
    torch.set_num_threads(args.threads)
    meta = run_metadata("cpu")
    lines = [f"bench_sde: m-USAM (B={BATCH}, m={MICRO}) on least squares, float64, "
             f"torch {meta['versions']['torch']}, threads={args.threads}, "
             f"{meta['machine']['cpu_count']} CPUs (shared), {args.steps} steps per timing, best "
             f"wall time of {args.repeats} calls", ""]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    print("\n".join(lines), flush=True)
    emit("1. ensemble vs SDE fast path, seconds per step (N = 16); ratio = ensemble / SDE "
         "(target: new <= 1.2)")
    emit(f"{'d':>4} {'chains':>7} {'SDE':>10} {'old ens.':>10} {'new ens.':>10} "
         f"{'old/SDE':>8} {'new/SDE':>8} {'old/new':>8}")
    for dim, chains in progress_bar(sizes, desc="ensemble vs SDE"):
        t = ensemble_against_sde(dim, chains, args.steps, args.repeats)
        emit(f"{dim:>4} {chains:>7} {t['SDE']:>10.3g} {t['old ensemble']:>10.3g} "
             f"{t['new ensemble']:>10.3g} {t['old ensemble'] / t['SDE']:>8.2f} "
             f"{t['new ensemble'] / t['SDE']:>8.2f} {t['old ensemble'] / t['new ensemble']:>8.2f}")
    emit("")
    emit("2. SDE fast path, microseconds per chain-step, 1e4 chains (target at N=64, d=20: "
         "old/new >= 3)")
    emit(f"{'N':>4} {'d':>4} {'old':>10} {'new':>10} {'old/new':>8}")
    for n, dim in ((8, 2), (64, 20)):
        t = sde_chunking(n, dim, 10_000, args.steps, args.repeats)
        emit(f"{n:>4} {dim:>4} {t['old']:>10.3g} {t['new']:>10.3g} {t['old'] / t['new']:>8.2f}")
    emit("")
    emit("3. SDE-vs-discrete comparison of end-time moments (loss, tr V), N = 16, d = 20, "
         "dt = eta: peak RSS of a fresh process (target at 1e5 chains x 1000 steps: <= 4096 MiB)")
    emit(f"{'way':>4} {'chains':>7} {'steps':>6} {'peak MiB':>9} {'wall s':>8} {'CPU s':>8}")
    runs = [("old", memory_chains, memory_steps), ("new", memory_chains, memory_steps)]
    runs += [("new", 100_000, int(steps)) for steps in args.full_steps.split(",")] \
        if args.memory_full else []
    peaks = {}
    for way, chains, steps in runs:
        r = peak_rss_of(way, chains, steps, args.threads)
        peaks[(way, chains, steps)] = r["peak_rss_mib"]
        emit(f"{way:>4} {chains:>7} {steps:>6} {r['peak_rss_mib']:>9.0f} {r['wall_s']:>8.1f} "
             f"{r['cpu_s']:>8.1f}" + (f"  failed: {r['failed']}" if "failed" in r else ""))
    emit(f"     old/new peak RSS at {memory_chains} x {memory_steps}: "
         f"{peaks[('old', memory_chains, memory_steps)] / peaks[('new', memory_chains, memory_steps)]:.1f}x; "
         f"the old way at 1e5 x 1000 would hold two paths of {2 * 1001 * 100_000 * 20 * 8 / 2**30:.0f} GiB "
         "(plus the SDE list while stacking)")
    path = atomic_write(Path(out) / "bench_sde.txt", lambda f: f.write("\n".join(lines) + "\n"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
