"""CPU time of the symbolic m-USAM derivation against the number of samples N.

m-USAM without replacement (d = 1, B = 4, m = 2, order 1) on N concrete per-sample losses
``f_i(x) = (x - a_i)^2/2 + b_i x^3/3 + x^4/12``, derived three ways in one run:

- ``old``: enumeration of the index sets, adding each term to a growing sympy sum (the code
  before issue 12: the sum is re-flattened for every one of the O(N^4) micro-batch pairs);
- ``collected``: enumeration, each entry's terms collected and added once
  (``expectations="enumeration"``);
- ``new``: what ``derive`` does by default (``expectations="auto"``: past a few dozen index
  sets, the generic SGN-moment result evaluated on the losses).

Each cell is CPU seconds (sympy's cache cleared before each), with the ratio old / that; the
drift and diffusion of every way are checked structurally identical to ``collected``'s. The
last line gives each way's growth exponent from N = 8 to 16 (else over the N it ran).
Usage: ``python experiments/benchmarks/bench_symbolic.py [--n 4 8 12 16 24] [--old-max 12]
[--out [DIR]]`` -- the table is printed; ``--out DIR`` also writes ``DIR/bench_symbolic.txt``
(``--out`` alone: a fresh ``runs/bench_symbolic-<time>/``).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Iterable
from unittest import mock

import sympy
from sympy.core.cache import clear_cache

from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import atomic_write
from sdesam.symbolic import derive
from sdesam.symbolic.families import ConcreteFamily

BATCH, MICRO, SAMPLING = 4, 2, "without-replacement"


def losses_of(n: int) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
    """N one-dimensional non-quadratic losses whose gradient noise depends on x."""
    x = sympy.Symbol("x", real=True)
    return [(x - (i % 5 - 2)) ** 2 / 2 + sympy.Rational(i % 3 - 1, 2) * x**3 / 3 + x**4 / 12
            for i in range(n)], [x]


def running_sum(terms: Iterable[tuple[sympy.Matrix, sympy.Expr]]) -> sympy.Matrix:
    """The old summation: each weighted term added to the total as it comes."""
    total = None
    for matrix, p in terms:
        term = matrix * p
        total = term if total is None else total + term
    return total


def timed(n: int, way: str):
    """(CPU seconds, derivation) of one way at N = n."""
    losses, variables = losses_of(n)
    clear_cache()
    expectations = "auto" if way == "new" else "enumeration"
    start = time.process_time()
    if way == "old":
        with mock.patch.object(ConcreteFamily, "weighted_sum", staticmethod(running_sum)):
            d = derive("m-usam", losses, variables, batch=BATCH, micro=MICRO, sampling=SAMPLING,
                       expectations=expectations)
    else:
        d = derive("m-usam", losses, variables, batch=BATCH, micro=MICRO, sampling=SAMPLING,
                   expectations=expectations)
    return time.process_time() - start, d


def main(argv: list[str] | None = None) -> int:
    """Run the table, print it, write it where ``--out`` says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8, 12, 16, 24],
                        help="numbers of samples N (default: 4 8 12 16 24)")
    parser.add_argument("--old-max", type=int, default=12,
                        help="largest N the old way runs at (N = 16 takes minutes; default 12)")
    parser.add_argument("--collected-max", type=int, default=16,
                        help="largest N the collected enumeration runs at (default 16)")
    parser.add_argument("--out", nargs="?", const="", default=None,
                        help="also write the table to DIR/bench_symbolic.txt (no DIR: a fresh runs/ folder)")
    args = parser.parse_args(argv)
    folder = None
    if args.out is not None:
        folder = check_writable(resolve_out(args.out or None, "bench_symbolic"))
    limits = {"old": args.old_max, "collected": args.collected_max, "new": max(args.n)}
    lines = [f"bench_symbolic: m-USAM, d=1, B={BATCH}, m={MICRO}, {SAMPLING}, order 1, "
             f"sympy {sympy.__version__}; CPU seconds (ratio old / way)",
             f"{'N':>4} {'old':>10} {'collected':>18} {'new':>18}  identical"]
    seconds: dict[str, dict[int, float]] = {way: {} for way in limits}
    for n in args.n:
        results = {way: timed(n, way) for way in limits if n <= limits[way]}
        for way, (t, _) in results.items():
            seconds[way][n] = t
        base = results["collected"][1] if "collected" in results else None
        same = "-" if base is None else all(d.drift == base.drift and d.diffusion == base.diffusion
                                            for _, d in results.values())
        cells = []
        for way in limits:
            if way not in results:
                cells.append(f"{'-':>{10 if way == 'old' else 18}}")
            elif way == "old":
                cells.append(f"{results[way][0]:>10.2f}")
            else:
                old = seconds["old"].get(n)
                ratio = f"({old / results[way][0]:6.1f}x)" if old else " " * 9
                cells.append(f"{results[way][0]:>8.2f} {ratio}")
        lines.append(f"{n:>4} " + " ".join(cells) + f"  {same}")
        print(lines[-1], flush=True)
    growth = []
    for way, times in seconds.items():
        span = (8, 16) if 8 in times and 16 in times else (min(times), max(times))
        if span[0] != span[1]:
            exponent = math.log(times[span[1]] / times[span[0]]) / math.log(span[1] / span[0])
            growth.append(f"{way} N^{exponent:.2f} (N={span[0]}..{span[1]})")
    lines.append("growth: " + ", ".join(growth))
    table = "\n".join(lines)
    print("\n" + table)
    if folder is not None:
        path = folder / "bench_symbolic.txt"
        atomic_write(path, lambda f: f.write(table + "\n"))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
