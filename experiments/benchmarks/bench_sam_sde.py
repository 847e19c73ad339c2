"""Cost of the SAM-family SDEs per chain-step, as a ratio to the m-USAM SDE, old estimator
against new, measured side by side in one run (issue 19, item 3).

The drifts of SAM, m-SAM and RW-SAM hold an expectation over batches S. The **old** estimator
(kept here only, faithfully copied, as the baseline: :func:`old_sets`, :class:`OldSetsSDE`)
took it over every distinct batch when there were at most 20000, else over 4096 index sets
drawn once from the seed, the same sets for every chain and step; RW-SAM's Gibbs weights were
a softmax over all N samples with -inf off each batch. The **new** one is
:class:`sdesam.simulation.sde.AlgorithmSDE` with its default ``drift_batches="auto"``: every
batch when there are at most ``ENUMERATE_LIMIT``, else ``DRIFT_BATCHES`` batches drawn afresh
per chain and step (unbiased; see its docstring). The last column is the new code forced to
enumerate (``drift_batches="exact"``) where the batches are few enough.

Each SDE integrates ``--chains`` chains of least squares (float64, Euler with dt = eta, one
cell per step, only the end state kept) with :func:`sdesam.simulation.sde.euler_maruyama`; a
ratio is (seconds per chain-step of the rule's SDE) / (that of the m-USAM SDE, m = 4), both
best of ``--repeats`` calls. Sizes: N = 64, d = 20, B = 16 (target: new <= 10) and N = 8, d = 2,
B = 4 (target: new <= 3); m-SAM has m = 4, RW-SAM lam = 1. The small size runs 25x the steps
of the large one (its steps are short).

``--enumeration`` adds where enumerating the batches pays (what ``sde.ENUMERATE_LIMIT`` is
chosen from): SAM and RW-SAM with every batch or 8 drawn, at 36, 64, 120 and 330 batches, on
the feature route of least squares and on the per-sample route that problems without a
feature form take; ratios to the m-USAM SDE (m = 1).

Usage: ``python experiments/benchmarks/bench_sam_sde.py [--quick] [--steps 3] [--repeats 3]
[--chains 100] [--threads 1] [--enumeration] [--out experiments/benchmarks]`` (default output: a fresh
``runs/bench_sam_sde-*`` folder). The default run takes about 15 s on the 2-core machine (the
old RW-SAM at N = 64 alone about 0.6 s per step); ``--quick`` about 5 s.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sdesam import validation
from sdesam.cli import OneLineParser, guarded
from sdesam.experiment.arguments import QUICK_ENV
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import atomic_write, run_metadata
from sdesam.problems import LinearRegression
from sdesam.simulation import sde
from sdesam.simulation.brownian import FixedGridBrownian, time_grid
from sdesam.simulation.inputs import draw_batches

ETA, RHO, MICRO = 0.01, 0.05, 4
SIZES = ((64, 20, 16), (8, 2, 4))
SMALL_STEPS = 25
"""The small size runs this many times the steps of the large one."""
RULES = (("SAM", "sam", None), ("m-SAM m=4", "m-sam", MICRO), ("RW-SAM", "rw-sam", None))
TARGETS = {64: 10.0, 8: 3.0}

DEFAULTS: dict[str, Any] = {"steps": 3, "repeats": 3}
QUICK: dict[str, Any] = {"steps": 1, "repeats": 1}


# ---------------------------------------------------------------------- the old estimator
def old_sets(n: int, size: int, sampling: str, *, limit: int = 20000, samples: int = 4096,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The old ``sample_sets``: weights ``W [S, n]`` and probabilities of every distinct batch
    when there are at most ``limit``, else of ``samples`` index sets drawn once from ``seed``."""
    if sampling == "with-replacement":
        count = math.comb(n + size - 1, size)
        combos = itertools.combinations_with_replacement(range(n), size)
    else:
        count = math.comb(n, size)
        combos = itertools.combinations(range(n), size)
    if count <= limit:
        index = torch.tensor(list(combos), dtype=torch.long)
        weights = torch.zeros(count, n, dtype=torch.float64).scatter_add_(
            1, index, torch.full(index.shape, 1.0 / size, dtype=torch.float64))
        if sampling == "with-replacement":
            counts = weights * size
            log_p = (math.lgamma(size + 1) - torch.lgamma(counts + 1).sum(dim=1)
                     - size * math.log(n))
            return weights, log_p.exp()
        return weights, torch.full((count,), 1.0 / count, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    index = draw_batches(generator, samples, n, size, sampling)
    weights = torch.zeros(samples, n, dtype=torch.float64).scatter_add_(
        1, index, torch.full(index.shape, 1.0 / size, dtype=torch.float64))
    return weights, torch.full((samples,), 1.0 / samples, dtype=torch.float64)


class OldSetsSDE(sde.AlgorithmSDE):
    """The SDE with the old expectation over batches: :func:`old_sets`, shared by every chain
    and step, and RW-SAM's Gibbs weights by a softmax over all N with -inf off each batch."""

    def __init__(self, problem: LinearRegression, rule: str, **options: Any) -> None:
        super().__init__(problem, rule, drift_batches=1, **options)
        self.form = None              # the old code took these rules through per-sample gradients
        self.old_weights, self.old_probs = old_sets(problem.n, self.set_size, self.sampling,
                                                    seed=self.seed)
        self.set_draws, self.set_count = 0, int(self.old_probs.shape[0])   # nothing drawn
        self.sets_exact = sde.batch_count(problem.n, self.set_size, self.sampling) <= 20000

    def _cotangent(self, y: torch.Tensor, grads: torch.Tensor, mean: torch.Tensor,
                   draws: torch.Tensor | None) -> torch.Tensor:
        """The old code's expectation over batches (the only branch these rules take)."""
        scale = None if self.rule.scale is None else self.rule.scale(y).unsqueeze(-2)
        weights = self.old_weights.to(grads)
        descent = weights
        if self.rule.weighted:
            logits = self.lam * grads.norm(dim=-1).unsqueeze(-2) + weights.log()
            gibbs = torch.softmax(logits, dim=-1)
            set_grads = gibbs @ grads
            if self.rule.descent_weights == "response":
                descent = gibbs
        else:
            set_grads = weights @ grads
        if scale is not None:
            set_grads = set_grads * scale
        units = set_grads / set_grads.norm(dim=-1, keepdim=True)
        probs = self.old_probs.to(grads).unsqueeze(-1)
        return self.rho * descent.transpose(-1, -2) @ (probs * units)


# ---------------------------------------------------------------------- measurements
def least_squares(n: int, dim: int) -> LinearRegression:
    """Least squares on ``n`` Gaussian examples in ``dim`` dimensions (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    return LinearRegression(torch.randn(n, dim, generator=gen, dtype=torch.float64),
                            torch.randn(n, generator=gen, dtype=torch.float64))


def integration(model: Any, chains: int, steps: int) -> Callable[[], object]:
    """A call integrating ``model`` over ``steps`` steps of ``chains`` chains (end state only)."""
    problem = model.problem
    x0 = torch.zeros(chains, problem.dim, dtype=torch.float64)
    bm = FixedGridBrownian(time_grid(steps * ETA, ETA), (chains, problem.n), 0)
    return lambda: sde.euler_maruyama(model, x0, bm, every=None, keep_states=False)


def best_times(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each call over ``repeats`` rounds that time every call once, after one
    warm-up call each: interleaved, so a change of the machine's load hits all alike."""
    with torch.no_grad():
        for call in calls.values():
            call()
        best = dict.fromkeys(calls, math.inf)
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def describe(model: sde.AlgorithmSDE, inexact: str) -> str:
    """The batches of ``model``'s expectation: ``all S``, or ``K`` and ``inexact`` (how they
    were drawn)."""
    return f"all {model.set_count}" if model.sets_exact else f"{model.set_count} {inexact}"


def measure_size(n: int, dim: int, batch: int, chains: int, steps: int,
                 repeats: int) -> list[dict[str, Any]]:
    """One row per rule at one size: the m-USAM SDE's microseconds per chain-step and each
    estimator's ratio to it (the new one forced to enumerate where the batches are few enough)."""
    problem = least_squares(n, dim)
    common = dict(eta=ETA, rho=RHO, batch=batch)
    models: dict[str, Any] = {"base": sde.AlgorithmSDE(problem, "m-usam", micro=MICRO, **common)}
    for label, rule, micro in RULES:
        options = dict(common, micro=micro)
        models[f"{label} old"] = OldSetsSDE(problem, rule, **options)
        models[f"{label} new"] = new = sde.AlgorithmSDE(problem, rule, **options)
        if not new.sets_exact and sde.batch_count(n, new.set_size, new.sampling) <= sde.EXACT_LIMIT:
            models[f"{label} exact"] = sde.AlgorithmSDE(problem, rule, drift_batches="exact",
                                                        **options)
    calls = {name: integration(model, chains, steps) for name, model in models.items()}
    seconds = best_times(calls, repeats)
    ratio = {name: value / seconds["base"] for name, value in seconds.items()}
    return [{"rule": label, "base_us": seconds["base"] / (chains * steps) * 1e6,
             "old_sets": describe(models[f"{label} old"], "fixed"),
             "new_sets": describe(models[f"{label} new"], "drawn"),
             "old": ratio[f"{label} old"], "new": ratio[f"{label} new"],
             "exact": ratio.get(f"{label} exact")} for label, _, _ in RULES]


ENUMERATION_SIZES = ((8, 2, 2), (64, 20, 1), (8, 2, 3), (8, 2, 4))
"""``--enumeration``'s sizes (N, d, B): 36, 64, 120 and 330 distinct batches with replacement."""


def per_sample_route(model: sde.AlgorithmSDE) -> sde.AlgorithmSDE:
    """``model`` made to take the per-sample route (as for a problem without a feature form)."""
    model.form = None
    return model


def enumeration_rows(chains: int, steps: int, repeats: int) -> list[str]:
    """``--enumeration``: SAM's and RW-SAM's cost per chain-step / m-USAM's (m = 1), their
    batches enumerated or drawn, on the feature route and the per-sample one, at each of
    :data:`ENUMERATION_SIZES` (what ``sde.ENUMERATE_LIMIT`` is chosen from)."""
    lines = [f"enumerated ('exact') or {sde.DRIFT_BATCHES} drawn batches per chain and step, "
             "per chain-step / m-USAM SDE's (m=1), feature route and per-sample route",
             f"{'rule':<7} {'N':>3} {'d':>3} {'B':>3} {'batches':>7} {'feat exact':>10} "
             f"{'feat drawn':>10} {'per-sample exact':>16} {'per-sample drawn':>16}"]
    print("\n".join(lines), flush=True)
    for n, dim, batch in ENUMERATION_SIZES:
        problem = least_squares(n, dim)
        common = dict(eta=ETA, rho=RHO, batch=batch)
        models: dict[str, Any] = {"base": sde.AlgorithmSDE(problem, "m-usam", micro=1, **common)}
        for rule in ("sam", "rw-sam"):
            for how, batches in (("exact", "exact"), ("drawn", sde.DRIFT_BATCHES)):
                models[rule, "feat", how] = sde.AlgorithmSDE(problem, rule, drift_batches=batches,
                                                             **common)
                models[rule, "per", how] = per_sample_route(
                    sde.AlgorithmSDE(problem, rule, drift_batches=batches, **common))
        seconds = best_times({name: integration(model, chains, steps)
                              for name, model in models.items()}, repeats)
        for rule in ("sam", "rw-sam"):
            cells = [seconds[rule, route, how] / seconds["base"]
                     for route in ("feat", "per") for how in ("exact", "drawn")]
            lines.append(f"{rule:<7} {n:>3} {dim:>3} {batch:>3} "
                         f"{sde.batch_count(n, batch, 'with-replacement'):>7} {cells[0]:>10.2f} "
                         f"{cells[1]:>10.2f} {cells[2]:>16.2f} {cells[3]:>16.2f}")
            print(lines[-1], flush=True)
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the --quick or default settings filled in and checked."""
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get(QUICK_ENV) == "1",
                        help="one step and one timed call per measurement: about 5 s (default "
                             "run: about 15 s; also set by SDESAM_QUICK=1)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per timing at N = 64, {SMALL_STEPS}x that at N = 8 "
                             f"(default {DEFAULTS['steps']}; --quick {QUICK['steps']})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement, the best kept "
                             f"(default {DEFAULTS['repeats']}; --quick {QUICK['repeats']})")
    parser.add_argument("--chains", type=int, default=100, help="chains per SDE (default 100)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--enumeration", action="store_true",
                        help="also where enumerating the batches pays: SAM and RW-SAM "
                             "enumerated vs drawn at 36, 64, 120 and 330 batches (N = 8 runs "
                             f"{SMALL_STEPS}x --steps, N = 64 --steps)")
    parser.add_argument("--out", default=None, help="folder for bench_sam_sde.txt "
                        "(default: a fresh runs/bench_sam_sde-* folder; the committed table: "
                        "--out experiments/benchmarks)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("steps", "repeats", "chains", "threads"):
        validation.positive_int(f"--{name}", getattr(args, name))
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every rule at both sizes, print the table and write it to ``--out``."""
    args = parse_args(argv)
    out = check_writable(resolve_out(args.out, "bench_sam_sde"))
    torch.set_num_threads(args.threads)
    meta = run_metadata("cpu")
    start = time.perf_counter()
    lines = [f"bench_sam_sde: per chain-step cost / m-USAM SDE's (m={MICRO}), least squares, "
             f"float64, {args.chains} chains, dt = eta; torch {meta['versions']['torch']}, "
             f"threads={args.threads}, {meta['machine']['cpu_count']} CPUs (shared, load "
             f"{meta['machine']['load_average_1min']:.1f}), best wall time of {args.repeats} "
             f"calls of {args.steps} steps (N=64) / {SMALL_STEPS * args.steps} steps (N=8)",
             f"old: every batch up to 20000, else 4096 fixed sets; new: drift_batches='auto' "
             f"(every batch up to {sde.ENUMERATE_LIMIT}, else {sde.DRIFT_BATCHES} drawn per "
             "chain and step); new exact: drift_batches='exact'", "",
             f"{'rule':<10} {'N':>3} {'d':>3} {'B':>3} {'m-USAM us':>9} {'old sets':>10} "
             f"{'old':>8} {'new sets':>10} {'new':>6} {'old/new':>8} {'new exact':>9} "
             f"{'target':>7}"]
    print("\n".join(lines), flush=True)
    for n, dim, batch in SIZES:
        steps = args.steps * (SMALL_STEPS if n == 8 else 1)
        for row in measure_size(n, dim, batch, args.chains, steps, args.repeats):
            exact = "-" if row["exact"] is None else f"{row['exact']:.2f}"
            line = (f"{row['rule']:<10} {n:>3} {dim:>3} {batch:>3} {row['base_us']:>9.2f} "
                    f"{row['old_sets']:>10} {row['old']:>8.2f} {row['new_sets']:>10} "
                    f"{row['new']:>6.2f} {row['old'] / row['new']:>8.1f} {exact:>9} "
                    f"{'<= ' + format(TARGETS[n], 'g'):>7}")
            lines.append(line)
            print(line, flush=True)
    if args.enumeration:
        lines += [""] + enumeration_rows(args.chains, args.steps * SMALL_STEPS, args.repeats)
    lines += ["", f"wall time {time.perf_counter() - start:.0f} s"]
    print(lines[-1])
    path = atomic_write(Path(out) / "bench_sam_sde.txt", lambda f: f.write("\n".join(lines) + "\n"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("bench_sam_sde", main))
