"""When does vmapping m-SAM's micro-batches pay? Vmapped against sequential, per group size.

For each micro-batch size m of ``--micro`` (batch ``--batch-size``, so B/m micro-batches), the
same :class:`sdesam.optim.MSAM` step runs two ways on the same model and batch: every
micro-batch in one vmapped pass (``min_vmap_group = 1``, an unbounded memory budget) and
one micro-batch at a time (``vmap_budget_mb = 0``, the sequential pass). The two alternate
within each round, so that load from other processes falls on both; the table gives the median
process CPU time per step of each and the median of the per-round ratios vmapped /
sequential with its distribution-free 95% interval. The group size where the ratio falls
below 1 sets :data:`sdesam.optim.msam.MIN_VMAP_GROUP`.

The table goes to ``<out>/bench_vmap_group-<model>.txt``. The committed tables:
``python experiments/benchmarks/bench_vmap_group.py --out experiments/benchmarks`` (small CNN)
and ``... --model resnet18 --micro 16 8 4 --rounds 9 --out experiments/benchmarks``
(default output: a fresh ``runs/bench_vmap_group-*`` folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from sdesam import validation
from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import atomic_write, run_metadata
from sdesam.optim import MSAM
from sdesam.stats import median_interval
from sdesam.train.loop import per_sample_cross_entropy
from sdesam.train.models import build_model

UNBOUNDED_MB = 1e9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark settings (defaults: the run of bench_vmap_group-small.txt)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="a model of sdesam.train.models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro", type=int, nargs="+", default=[16, 8, 4, 2, 1])
    parser.add_argument("--rounds", type=int, default=25, help="paired timing rounds (>= 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="folder for bench_vmap_group-MODEL.txt "
                        "(default: a fresh runs/bench_vmap_group-* folder)")
    args = parser.parse_args(argv)
    validation.positive_int("--batch-size", args.batch_size)
    validation.positive_int("--threads", args.threads)
    if args.rounds < 6:
        raise validation.InputError(f"--rounds must be at least 6 (a 95% interval of the "
                                    f"median); got {args.rounds}")
    bad = [m for m in args.micro if m < 1 or args.batch_size % m or m == args.batch_size]
    if bad:
        raise validation.InputError(f"--micro values must divide --batch-size {args.batch_size} "
                                    f"and be smaller; got {bad}")
    return args


def optimizer(model: torch.nn.Module, micro: int, vmapped: bool) -> MSAM:
    """m-SAM on ``model``: all micro-batches in one vmapped pass, or one at a time."""
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.05, micro=micro, lr=0.05, momentum=0.9,
               vmap_budget_mb=UNBOUNDED_MB if vmapped else 0.0)
    if vmapped:
        opt.min_vmap_group = 1
    return opt


def main(argv: list[str] | None = None) -> int:
    """Time both ways for every m in paired rounds; print and write the table."""
    args = parse_args(argv)
    out = check_writable(resolve_out(args.out, "bench_vmap_group"))
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(10, (args.batch_size,), generator=generator)
    contenders = {}
    for micro in args.micro:
        for vmapped in (True, False):
            torch.manual_seed(0)
            model = build_model(args.model, 10, None)
            opt = optimizer(model, micro, vmapped)
            opt.step(model, per_sample_cross_entropy, inputs, targets)  # warm-up
            contenders[micro, vmapped] = (model, opt, [])
    started = time.perf_counter()
    for round_index in range(args.rounds):
        for model, opt, times in contenders.values():
            cpu = time.process_time()
            opt.step(model, per_sample_cross_entropy, inputs, targets)
            times.append(time.process_time() - cpu)
        print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
    meta = run_metadata("cpu")
    lines = [f"bench_vmap_group: MSAM on {args.model}, batch {args.batch_size}, "
             f"{args.threads} torch thread(s), {args.rounds} paired rounds; process CPU seconds "
             "per step (medians) and vmapped / sequential (median of per-round ratios, 95% CI)", "",
             f"{'m':>4} {'per pass':>9} {'vmapped s':>10} {'sequential s':>13} "
             f"{'ratio':>7} {'95% CI':>16}"]
    for micro in args.micro:
        vmapped, sequential = contenders[micro, True][2], contenders[micro, False][2]
        ratio, low, high = median_interval([a / b for a, b in zip(vmapped, sequential)])
        lines.append(f"{micro:>4} {args.batch_size // micro:>9} {statistics.median(vmapped):>10.4f} "
                     f"{statistics.median(sequential):>13.4f} {ratio:>7.3f} "
                     f"{f'{low:.3f}..{high:.3f}':>16}")
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    lines += ["", f"machine: {meta['machine']['processor']}, nproc {os.cpu_count()}, load average "
              f"after {load}; wall {time.perf_counter() - started:.0f} s; torch "
              f"{meta['versions']['torch']}; commit {meta['git_commit']}; {meta['utc_time']}"]
    text = "\n".join(lines) + "\n"
    table = out / f"bench_vmap_group-{args.model}.txt"
    atomic_write(table, lambda handle: handle.write(text))
    print(text)
    print(f"table written to {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
