"""Costs of the simulation layer, old way against new way, measured as ratios in one run.

Seven measurements (``--parts``, all by default; parts 1-3: m-USAM, B = 4, m = 2, on least
squares, float64; ``--threads`` CPU threads):

1. **Ensemble against SDE, per step**, on a grid of sizes (d x chains, 100 to 1e4 chains, N =
   16): the discrete ensemble's step (old: every micro-batch gradient by a VJP through all N
   samples; new: :func:`sdesam.simulation.ensemble.run`, gathering the chosen samples' rows of the
   per-sample gradients) against the SDE fast path (:func:`sdesam.simulation.sde.euler_maruyama`, one
   cell per step). Done when new ensemble / SDE <= 1.2 everywhere.
2. **SDE per chain-step** at N = 8, d = 2 and N = 64, d = 20 with 1e4 chains: the old fast path
   (whole ``[chains, N, d]`` temporaries each step, the path kept as a list and stacked)
   against the new one (cache-sized chunks of chains, only the end state kept), both on the
   per-sample route (:class:`PerSampleLeastSquares`: the feature route of part 5 came later).
3. **Peak memory** (peak RSS of a fresh process) of an SDE-vs-discrete comparison of end-time
   moments (discrete ensemble and SDE with dt = eta, test functions loss and tr V): the old way
   (both whole paths ``[steps+1, chains, d]`` kept, the SDE's as a list then stacked, the test
   functions evaluated on all of them) against the new (:func:`sdesam.simulation.compare.compare_algorithm`
   with ``every=None``: running moments only), at a size the old way survives; with
   ``--memory-full`` also the new way at 1e5 chains, d = 20, 1000 steps (``--full-steps``;
   about 570 s of CPU on the 2-core machine: the new way's peak does not depend on the steps).
4. **Per-sample gradients of a network** for :func:`sdesam.implicit.diagnose`, at N = 250, 500,
   1000 (``--module-n``) on the digits MLP 64 -> 128 -> 10 (float32, random data): the old
   :class:`sdesam.implicit.ModuleProblem` path (the Jacobian of all N losses, ``vmap(jacrev)``:
   cost ~ N^2) and the new one (each sample's loss differentiated alone) against
   :func:`sdesam.per_sample.per_sample_grads`. Done when new / per_sample_grads <= 1.2.
5. **SDE fast path against a closed-form loop**, microseconds per chain-step of m-USAM on least
   squares (float64, dt = eta, 1e4 chains, ``--quick`` 1e3) at N = 64, d = 20,
   B = 16, m = 4 and N = 8, d = 2, B = 4, m = 2: the loop one would write by hand for this
   problem (:func:`closed_form_run`, the same path to 1e-10) against
   :func:`sdesam.simulation.sde.euler_maruyama`. Done when fast / closed-form <= 1.5.
6. **The SAM-family SDEs per chain-step against the m-USAM SDE** (SAM, m-SAM m = 4, RW-SAM,
   100 chains, N = 64, d = 20, B = 16 and N = 8, d = 2, B = 4): the former estimator of the
   drift's expectation over batches (4096 fixed sets) against ``drift_batches="auto"``, as
   ``bench_sam_sde.py`` measures them (its functions, its step and repeat counts). Done when
   new <= 10 at N = 64 and <= 3 at N = 8.
7. **The compiled SDE against the hand-written one**, microseconds per chain-step of m-USAM
   (B = 4, m = 2) on least squares at N = 8, d = 2 and N = 16, d = 4, as
   ``bench_symbolic.py --sde`` measures them (its functions): the hand SDE, the former
   entry-by-entry compiled SDE and :class:`sdesam.simulation.derived_sde.DerivedSDE`, with the
   compile time. Done when new / hand <= 1.5.

The old code paths are kept, faithfully copied, in this file only, as the baselines
(:func:`old_ensemble_run`, :func:`old_euler_maruyama`, :func:`old_comparison`,
:func:`old_module_sample_grads`).
Usage: ``python experiments/benchmarks/bench_sde.py [--quick] [--parts 1,2,3,4,5,6,7] [--steps 10]
[--repeats 5] [--memory-full] [--out experiments/benchmarks]`` (default output: a fresh
``runs/bench_sde-*`` folder; a table of only some parts belongs there, not in the committed one).

Time: the run prints its expected duration first (a cost model of each measurement, fitted to
the committed table's 2-core machine) and shows a progress bar weighted by it. On that machine
the default run takes about 2 minutes (114 s wall at load 1.1, all seven parts) and peaks near
6 GiB (the old comparison at 1e4 chains x 100 steps); ``--quick`` about 30 s; ``--parts 4`` or
``--parts 5`` alone about 15 s; ``--memory-full`` adds about 4 minutes (the new comparison at
1e5 chains x 1000 steps: 217 s). The old comparison is refused up front, naming
``--memory-size``, when its estimated memory exceeds what the machine has available.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.func import jacrev, vmap
from sdesam.progress import progress_bar

from sdesam.simulation import compare, ensemble, memory, sde
from sdesam import implicit, per_sample, validation
from sdesam.cli import OneLineParser, guarded
from sdesam.experiment.arguments import QUICK_ENV
from sdesam.experiment.digits import make_model, per_sample_loss
from sdesam.simulation.brownian import FixedGridBrownian, time_grid
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.problems import LinearRegression
from sdesam.experiment.records import atomic_write, run_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sam_sde  # noqa: E402  (part 6 measures with its functions, part 7 with bench_symbolic's)

BATCH, MICRO, ETA, RHO = 4, 2, 0.01, 0.05
TEST_FNS = ("loss", "trace_V")
MEMORY_N, MEMORY_DIM, FULL_CHAINS = 16, 20, 100_000
MODULE_HIDDEN = 128
PARTS = (1, 2, 3, 4, 5, 6, 7)
SAM_FAMILY_CHAINS = 100
"""Part 6's chains per SDE (as ``bench_sam_sde.py``'s default)."""
COMPILED_SIZES = ("8:2", "16:4")
"""Part 7's sizes, N:d."""
COMPILED_RUN = {"default": (1000, 50), "quick": (200, 10)}
"""Part 7's (chains, steps), as ``bench_symbolic.py --sde``'s defaults."""
CLOSED_FORM_SIZES = ((64, 20, 16, 4), (8, 2, 4, 2))
"""Part 5's sizes: N, d, batch B and micro-batch m."""

DEFAULTS: dict[str, Any] = {"steps": 10, "repeats": 5, "chunk_chains": 10_000,
                            "sizes": "2x100,2x1000,2x10000,100x100,100x1000,100x10000",
                            "memory_size": "10000x100", "module_n": "250,500,1000"}
QUICK: dict[str, Any] = {"steps": 2, "repeats": 1, "chunk_chains": 1000,
                         "sizes": "2x100,2x1000,100x100", "memory_size": "1000x20",
                         "module_n": "250,500"}

COST = {"step": 1.5e-3, "chain_step": 4.4e-6, "chain_step_per_dim": 2.2e-7,
        "sde_chain_step": {(8, 2): 1.8e-6, (64, 20): 6.5e-5},
        "comparison_chain_step": {"old": 3.9e-5, "new": 6.0e-6}, "process": 5.0, "start": 5.0,
        "module_sample": 8.0e-5, "module_sample_pair": 1.0e-6,
        "closed_chain_step": {(64, 20): 6.0e-6, (8, 2): 6.0e-7},
        "sam_family": {"default": 20.0, "quick": 5.0},
        "compiled": {"default": 40.0, "quick": 15.0}}
"""Seconds of each unit of work on the 2-core machine of the committed table (fitted to its
rows): per step of part 1's three contenders, plus per chain-step (growing with d); per
chain-step of part 2's two SDE paths; per chain-step of a comparison, plus its fresh process
(importing torch); per sample of part 4's two linear paths and per sample pair (N^2) of its
old path; per chain-step of part 5's two contenders together; parts 6 and 7 as a whole
(7 with its derivations); and the
start of the run (imports, first-call warm-ups)."""


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


def old_module_sample_grads(problem: implicit.ModuleProblem, x: torch.Tensor) -> torch.Tensor:
    """The old :meth:`ModuleProblem.sample_grads` (the base class's): the Jacobian of all N
    per-sample losses at each point, so each sample's loss is differentiated against all N."""
    flat = x.reshape(-1, problem.dim)
    jac = vmap(jacrev(problem.sample_losses))(flat)
    return jac.reshape(*x.shape[:-1], problem.n, problem.dim)


def closed_form_run(problem: LinearRegression, x0: torch.Tensor, bm: FixedGridBrownian, *,
                    rho: float, batch: int, micro: int) -> torch.Tensor:
    """The m-USAM SDE on least squares as one would write it by hand (the reference of part 5):
    per-sample gradients ``g_i = r_i a_i`` with residuals ``r = A x - y``, drift ``-(g + rho/N
    sum_i H_i u_i)`` with ``H_i = a_i a_i^T`` and the USAM cotangent ``u_i = (1 - c) g + c g_i``
    (``c = 1/m``): ``sum_i H_i u_i = (1 - c) A^T A g + c A^T (r |a_i|^2)``; noise ``sqrt(eta
    c(B) / N) sum_i v_i (g_i - g) = sqrt(eta c(B) / N) A^T ((v - mean v) r)``. Same grid and
    Brownian increments as :func:`sdesam.simulation.sde.euler_maruyama`; returns the end state."""
    n = problem.n
    features, targets = problem.features.to(x0), problem.targets.to(x0)
    gram, squares = features.T @ features, features.square().sum(dim=-1)
    c, noise_scale = 1.0 / micro, (ETA / batch / n) ** 0.5
    x, times = x0.clone(), bm.times
    for cell in range(times.numel() - 1):
        dt = float(times[cell + 1] - times[cell])
        v = bm.increment(cell)
        r = x @ features.T - targets
        mean = r @ features / n
        curvature = (1 - c) * mean @ gram + c * (r * squares) @ features
        noise = ((v - v.mean(dim=-1, keepdim=True)) * r) @ features
        x = x - dt * (mean + rho / n * curvature) + noise_scale * noise
    return x


def fast_against_closed_form(n: int, dim: int, batch: int, micro: int, chains: int, steps: int,
                             repeats: int) -> dict[str, float]:
    """Microseconds per chain-step of :func:`closed_form_run` and the SDE fast path
    (:func:`sdesam.simulation.sde.euler_maruyama`, end state only) on m-USAM, dt = eta."""
    problem = least_squares(n, dim)
    model = sde.AlgorithmSDE(problem, "m-usam", eta=ETA, rho=RHO, batch=batch, micro=micro)
    x0 = torch.zeros(chains, dim, dtype=torch.float64)
    bm = FixedGridBrownian(time_grid(steps * ETA, ETA), (chains, n), 0)
    with torch.no_grad():
        closed = best_time(lambda: closed_form_run(problem, x0, bm, rho=RHO, batch=batch,
                                                   micro=micro), repeats)
        fast = best_time(lambda: sde.euler_maruyama(model, x0, bm, every=None, keep_states=False),
                         repeats)
    return {"closed": closed / (chains * steps) * 1e6, "fast": fast / (chains * steps) * 1e6}


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


class PerSampleLeastSquares(LinearRegression):
    """Least squares without its feature form: the SDE takes the per-sample ``[chains, N, d]``
    route of every problem, whose chunking part 2 measures."""

    def feature_form(self) -> None:
        """None: no structure to exploit."""
        return None


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
    """Microseconds per chain-step of the old and new SDE fast paths (per-sample route)."""
    data = least_squares(n, dim)
    problem = PerSampleLeastSquares(data.features, data.targets)
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
            f"errors = m.{way}_comparison(m.least_squares({MEMORY_N}, {MEMORY_DIM}), {chains}, {steps}"
            f"{', progress=True' if way == 'new' else ''}); "
            "print(json.dumps({'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'wall_s': time.time() - start, 'cpu_s': time.process_time() - cpu, 'errors': errors}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return {"peak_rss_mib": float("nan"), "wall_s": float("nan"), "cpu_s": float("nan"),
                "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def module_sample_grads(n: int, repeats: int) -> dict[str, float]:
    """Seconds per call of the old and new :meth:`ModuleProblem.sample_grads` and of
    :func:`per_sample.per_sample_grads` on the digits MLP with ``n`` random samples (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 64, generator=gen)
    targets = torch.randint(0, 10, (n,), generator=gen)
    model = make_model(hidden=MODULE_HIDDEN, seed=0)
    problem = implicit.ModuleProblem(model, per_sample_loss, inputs, targets)
    x = problem.point()
    with torch.no_grad():
        return {"per_sample": best_time(lambda: per_sample.per_sample_grads(
                    model, per_sample_loss, inputs, targets), repeats),
                "old": best_time(lambda: old_module_sample_grads(problem, x), repeats),
                "new": best_time(lambda: problem.sample_grads(x), repeats)}


def module_seconds(n: int, repeats: int) -> float:
    """Expected seconds of one size of part 4 (three contenders, ``repeats`` + 1 calls)."""
    return (repeats + 1) * (n * COST["module_sample"] + n * n * COST["module_sample_pair"])


def ensemble_seconds(dim: int, chains: int, steps: int, repeats: int) -> float:
    """Expected seconds of one size of part 1 (three contenders, ``repeats`` + 1 calls)."""
    per_step = COST["step"] + chains * (COST["chain_step"] + dim * COST["chain_step_per_dim"])
    return (repeats + 1) * steps * per_step


def comparison_seconds(way: str, chains: int, steps: int) -> float:
    """Expected seconds of one comparison of part 3, in its fresh process."""
    return COST["process"] + chains * steps * COST["comparison_chain_step"][way]


def old_comparison_bytes(chains: int, steps: int) -> int:
    """The old comparison's peak: two whole paths, and tr V's per-sample gradients (and their
    centred copy) on every state of a path."""
    states = (steps + 1) * chains
    return states * MEMORY_DIM * 8 * (2 + 2 * MEMORY_N)


def size_pair(argument: str, text: str) -> tuple[int, int]:
    """``AxB`` as two positive integers (an InputError naming ``argument`` otherwise)."""
    try:
        first, second = (int(v) for v in text.split("x"))
    except ValueError:
        raise validation.InputError(f"{argument} must be AxB with positive integers; got {text!r}") from None
    return validation.positive_int(argument, first), validation.positive_int(argument, second)


def int_list(argument: str, text: str) -> list[int]:
    """Comma-separated positive integers (an InputError naming ``argument`` otherwise)."""
    try:
        return [validation.positive_int(argument, int(v)) for v in text.split(",")]
    except ValueError as error:
        raise validation.InputError(f"{argument} must be comma-separated positive integers; "
                                    f"got {text!r}") from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the --quick or default sizes filled in and checked."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get(QUICK_ENV) == "1",
                        help="small sizes: every part in about 30 s (default run: about 2 min; "
                             "also set by SDESAM_QUICK=1)")
    parser.add_argument("--parts", default=",".join(map(str, PARTS)),
                        help="comma-separated parts to measure (default: all of 1,2,3,4,5,6,7)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per timing (default {DEFAULTS['steps']}; --quick {QUICK['steps']})")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement of parts 1 and 2, the best kept "
                             f"(default {DEFAULTS['repeats']}; --quick {QUICK['repeats']})")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated DIMxCHAINS of the ensemble-vs-SDE grid "
                             f"(default {DEFAULTS['sizes']}; --quick {QUICK['sizes']})")
    parser.add_argument("--memory-size", default=None,
                        help=f"CHAINSxSTEPS of the old-vs-new memory comparison (default "
                             f"{DEFAULTS['memory_size']}, where the old way peaks near 7 GiB; "
                             f"--quick {QUICK['memory_size']})")
    parser.add_argument("--memory-full", action="store_true",
                        help="also run the new comparison at 1e5 chains, d = 20, --full-steps "
                             "steps (about 10 minutes more)")
    parser.add_argument("--module-n", default=None,
                        help=f"comma-separated sample counts N of part 4 (default "
                             f"{DEFAULTS['module_n']}; --quick {QUICK['module_n']})")
    parser.add_argument("--full-steps", default="1000",
                        help="comma-separated step counts of the --memory-full runs (the new "
                             "way keeps no per-step state, so its peak does not grow with them)")
    parser.add_argument("--out", default=None, help="folder for bench_sde.txt "
                        "(default: a fresh runs/bench_sde-* folder; the committed table: "
                        "--out experiments/benchmarks)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    validation.positive_int("--steps", args.steps)
    validation.positive_int("--threads", args.threads)
    validation.positive_int("--repeats", args.repeats)
    args.sizes = [size_pair("--sizes", size) for size in args.sizes.split(",")]
    args.memory_size = size_pair("--memory-size", args.memory_size)
    args.full_steps = int_list("--full-steps", args.full_steps)
    args.module_n = int_list("--module-n", args.module_n)
    args.parts = int_list("--parts", args.parts)
    if not set(args.parts) <= set(PARTS):
        raise validation.InputError(f"--parts must be comma-separated numbers from "
                                    f"{', '.join(map(str, PARTS))}; got {args.parts}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurements, print the table and write it to ``--out``/bench_sde.txt."""
    args = parse_args(argv)
    parts = set(args.parts)
    memory_chains, memory_steps = args.memory_size
    memory.require([memory.Part("the old comparison's two paths and per-sample gradients",
                                "--memory-size", f"{memory_chains}x{memory_steps}",
                                old_comparison_bytes(memory_chains, memory_steps),
                                "lower --memory-size")] if 3 in parts else [])
    out = check_writable(resolve_out(args.out, "bench_sde"))
    torch.set_num_threads(args.threads)
    meta = run_metadata("cpu")
    chunk_chains = args.chunk_chains
    runs = [("old", memory_chains, memory_steps), ("new", memory_chains, memory_steps)]
    runs += [("new", FULL_CHAINS, steps) for steps in args.full_steps] if args.memory_full else []
    costs = {1: [ensemble_seconds(dim, chains, args.steps, args.repeats) for dim, chains in args.sizes],
             2: [(args.repeats + 1) * args.steps * chunk_chains * COST["sde_chain_step"][size]
                 for size in ((8, 2), (64, 20))],
             3: [comparison_seconds(way, chains, steps) for way, chains, steps in runs],
             4: [module_seconds(n, args.repeats) for n in args.module_n],
             5: [(args.repeats + 1) * args.steps * chunk_chains * COST["closed_chain_step"][(n, dim)]
                 for n, dim, _, _ in CLOSED_FORM_SIZES],
             6: [COST["sam_family"]["quick" if args.quick else "default"] / len(bench_sam_sde.SIZES)
                 for _ in bench_sam_sde.SIZES],
             7: [COST["compiled"]["quick" if args.quick else "default"]]}
    plan = [seconds for part in sorted(parts) for seconds in costs[part]]
    simulation = (f"m-USAM (B={BATCH}, m={MICRO}) on least squares, float64 (parts 1-3), "
                  if parts & {1, 2, 3} else "")
    lines = [f"bench_sde, parts {','.join(map(str, sorted(parts)))}: {simulation}torch "
             f"{meta['versions']['torch']}, threads={args.threads}, {meta['machine']['cpu_count']} "
             f"CPUs (shared), {args.steps} steps per timing, best wall time of {args.repeats} calls", ""]
    print("\n".join(lines), flush=True)
    print(f"expected: about {COST['start'] + sum(plan):.0f} s on the 2-core machine of the "
          f"committed table ({len(plan)} measurements)", flush=True)
    bar = progress_bar(total=round(sum(plan), 1), desc="bench_sde", unit="s",
                       show=not args.no_progress)
    expected = iter(plan)

    def emit(line: str) -> None:
        lines.append(line)
        bar.write(line)

    def done() -> None:
        bar.update(round(next(expected), 1))

    if 1 in parts:
        emit("1. ensemble vs SDE fast path, seconds per step (N = 16); ratio = ensemble / SDE "
             "(target: new <= 1.2)")
        emit(f"{'d':>4} {'chains':>7} {'SDE':>10} {'old ens.':>10} {'new ens.':>10} "
             f"{'old/SDE':>8} {'new/SDE':>8} {'old/new':>8}")
        for dim, chains in args.sizes:
            t = ensemble_against_sde(dim, chains, args.steps, args.repeats)
            emit(f"{dim:>4} {chains:>7} {t['SDE']:>10.3g} {t['old ensemble']:>10.3g} "
                 f"{t['new ensemble']:>10.3g} {t['old ensemble'] / t['SDE']:>8.2f} "
                 f"{t['new ensemble'] / t['SDE']:>8.2f} {t['old ensemble'] / t['new ensemble']:>8.2f}")
            done()
        emit("")
    if 2 in parts:
        emit(f"2. SDE fast path, microseconds per chain-step, {chunk_chains} chains (target at "
             "N=64, d=20: old/new >= 3)")
        emit(f"{'N':>4} {'d':>4} {'old':>10} {'new':>10} {'old/new':>8}")
        for n, dim in ((8, 2), (64, 20)):
            t = sde_chunking(n, dim, chunk_chains, args.steps, args.repeats)
            emit(f"{n:>4} {dim:>4} {t['old']:>10.3g} {t['new']:>10.3g} {t['old'] / t['new']:>8.2f}")
            done()
        emit("")
    if 3 in parts:
        emit(f"3. SDE-vs-discrete comparison of end-time moments (loss, tr V), N = {MEMORY_N}, "
             f"d = {MEMORY_DIM}, dt = eta: peak RSS of a fresh process (target at 1e5 chains x "
             "1000 steps: <= 4096 MiB)")
        emit(f"{'way':>4} {'chains':>7} {'steps':>6} {'peak MiB':>9} {'wall s':>8} {'CPU s':>8}")
        peaks = {}
        for way, chains, steps in runs:
            r = peak_rss_of(way, chains, steps, args.threads)
            peaks[(way, chains, steps)] = r["peak_rss_mib"]
            emit(f"{way:>4} {chains:>7} {steps:>6} {r['peak_rss_mib']:>9.0f} {r['wall_s']:>8.1f} "
                 f"{r['cpu_s']:>8.1f}" + (f"  failed: {r['failed']}" if "failed" in r else ""))
            done()
        emit(f"     old/new peak RSS at {memory_chains} x {memory_steps}: "
             f"{peaks[('old', memory_chains, memory_steps)] / peaks[('new', memory_chains, memory_steps)]:.1f}x; "
             f"the old way at 1e5 x 1000 would hold two paths of "
             f"{2 * 1001 * FULL_CHAINS * MEMORY_DIM * 8 / 2**30:.0f} GiB (plus the SDE list while stacking)")
        emit("")
    if 4 in parts:
        dim = sum(p.numel() for p in make_model(hidden=MODULE_HIDDEN).parameters())
        emit(f"4. implicit ModuleProblem.sample_grads / per_sample_grads, seconds per call, digits "
             f"MLP 64-{MODULE_HIDDEN}-10 (P = {dim}), float32, random data (target: "
             "new/per-sample <= 1.2)")
        emit(f"{'N':>5} {'per-sample':>10} {'old':>10} {'new':>10} {'old/p-s':>8} "
             f"{'new/p-s':>8} {'old/new':>8}")
        for n in args.module_n:
            t = module_sample_grads(n, args.repeats)
            emit(f"{n:>5} {t['per_sample']:>10.3g} {t['old']:>10.3g} {t['new']:>10.3g} "
                 f"{t['old'] / t['per_sample']:>8.2f} {t['new'] / t['per_sample']:>8.2f} "
                 f"{t['old'] / t['new']:>8.2f}")
            done()
        emit("")
    if 5 in parts:
        emit(f"5. SDE fast path vs closed-form loop, microseconds per chain-step, m-USAM on least "
             f"squares, {chunk_chains} chains, dt = eta (target: fast/closed <= 1.5)")
        emit(f"{'N':>4} {'d':>4} {'B':>4} {'m':>4} {'closed':>10} {'fast':>10} {'ratio':>8} "
             f"{'target':>7}")
        for n, dim, batch, micro in CLOSED_FORM_SIZES:
            t = fast_against_closed_form(n, dim, batch, micro, chunk_chains, args.steps, args.repeats)
            emit(f"{n:>4} {dim:>4} {batch:>4} {micro:>4} {t['closed']:>10.3g} {t['fast']:>10.3g} "
                 f"{t['fast'] / t['closed']:>8.2f} {1.5:>7.1f}")
            done()
        emit("")
    if 6 in parts:
        settings = bench_sam_sde.QUICK if args.quick else bench_sam_sde.DEFAULTS
        emit(f"6. SAM-family SDE per chain-step / m-USAM SDE's (m={bench_sam_sde.MICRO}), least "
             f"squares, {SAM_FAMILY_CHAINS} chains, dt = eta, best of {settings['repeats']} calls "
             f"of {settings['steps']} steps (N=64) / {bench_sam_sde.SMALL_STEPS * settings['steps']}"
             " (N=8); old: 4096 fixed batch sets, new: drift_batches='auto'")
        emit(f"{'rule':<10} {'N':>3} {'d':>3} {'B':>3} {'m-USAM us':>9} {'old':>8} {'new':>6} "
             f"{'old/new':>8} {'target':>7}")
        for n, dim, batch in bench_sam_sde.SIZES:
            steps = settings["steps"] * (bench_sam_sde.SMALL_STEPS if n == 8 else 1)
            for row in bench_sam_sde.measure_size(n, dim, batch, SAM_FAMILY_CHAINS, steps,
                                                  settings["repeats"]):
                emit(f"{row['rule']:<10} {n:>3} {dim:>3} {batch:>3} {row['base_us']:>9.2f} "
                     f"{row['old']:>8.2f} {row['new']:>6.2f} {row['old'] / row['new']:>8.1f} "
                     f"{'<= ' + format(bench_sam_sde.TARGETS[n], 'g'):>7}")
            done()
        emit("")
    if 7 in parts:
        import bench_symbolic   # imports sympy: only when part 7 runs
        chains, steps = COMPILED_RUN["quick" if args.quick else "default"]
        emit("7. compiled SDE (DerivedSDE) vs the hand-written SDE (target: new / hand <= 1.5)")
        with contextlib.redirect_stdout(io.StringIO()):     # its own printing: emitted here
            table = bench_symbolic.sde_table(list(COMPILED_SIZES), chains, steps)
        for line in table:
            emit(line)
        done()
    bar.close()
    text = "\n".join(lines).rstrip("\n") + "\n"
    path = atomic_write(Path(out) / "bench_sde.txt", lambda f: f.write(text))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("bench_sde", main))
