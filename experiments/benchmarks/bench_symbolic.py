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

``--sde N:d [N:d ...]`` measures the compiled SDE instead (issue 19, item 4): m-USAM (B = 4,
m = 2, with replacement) derived on least squares with N examples in d dimensions, microseconds
per chain-step of Euler-Maruyama (``--chains`` chains, ``--steps`` steps, dt = eta, 1 thread
advised) for the hand-written SDE (:func:`sdesam.simulation.sde.simulate`, setup included),
the compiled SDE the ``old`` way (drift and Sigma lambdified entry by entry, evaluated
separately; :class:`EntrywiseSDE`) and the ``new`` one (:class:`DerivedSDE`), each compiled
SDE integrated already built; their ratios to hand, the compilation seconds of the new one and
the largest difference of the final states of old and new (float rounding).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Iterable
from unittest import mock

import sympy
import torch
from sympy.core.cache import clear_cache

from sdesam.experiment.outputs import check_writable, resolve_out
from sdesam.experiment.records import atomic_write
from sdesam.problems import LinearRegression
from sdesam.simulation import sde
from sdesam.simulation.derived_sde import DerivedSDE, integrate, machine_numbers, parameter_symbols
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


class EntrywiseSDE(DerivedSDE):
    """The compiled SDE before issue 19, item 4 (the ``old`` way): drift and Sigma lambdified
    entry by entry (``cse=True`` within each matrix), two evaluations per step, each entry
    written into a zero matrix."""

    def __init__(self, derivation, **values) -> None:
        super().__init__(derivation, **values)
        symbols = derivation.variables + parameter_symbols(derivation)
        self.parts = []
        for matrix in (derivation.drift, derivation.diffusion):
            entries = [machine_numbers(entry) for entry in matrix]
            nonzero = [k for k, entry in enumerate(entries) if entry != 0]
            self.parts.append((matrix.shape, nonzero, sympy.lambdify(
                symbols, [entries[k] for k in nonzero], modules="torch", cse=True)))

    def entrywise(self, part, y: torch.Tensor) -> torch.Tensor:
        shape, nonzero, function = part
        out = torch.zeros(*y.shape[:-1], shape[0] * shape[1], dtype=y.dtype)
        values = [torch.as_tensor(v, dtype=y.dtype) for v in self.values]
        for k, value in zip(nonzero, function(*y.unbind(-1), *values)):
            out[..., k] = torch.as_tensor(value, dtype=y.dtype).broadcast_to(y.shape[:-1])
        return out.unflatten(-1, shape)

    def terms(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entrywise(self.parts[0], y).squeeze(-1), self.entrywise(self.parts[1], y)


def sde_row(n: int, dim: int, chains: int, steps: int) -> str:
    """One ``--sde`` row: hand, old and new microseconds per chain-step (best of 3)."""
    gen = torch.Generator().manual_seed(0)
    problem = LinearRegression(torch.randn(n, dim, generator=gen, dtype=torch.float64),
                               torch.randn(n, generator=gen, dtype=torch.float64))
    losses, variables = problem.sympy_form()
    derivation = derive("m-usam", losses, variables, batch=BATCH, micro=MICRO)
    eta, rho = 0.05, 0.1
    start = time.process_time()
    new = DerivedSDE(derivation, eta=eta, rho=rho)
    compile_s = time.process_time() - start
    old = EntrywiseSDE(derivation, eta=eta, rho=rho)
    options = dict(x0=[0.3] * dim, horizon=steps * eta, chains=chains, seed=0, dt=eta,
                   keep_states=False)
    ways = {"hand": lambda: sde.simulate(problem, "m-usam", batch=BATCH, micro=MICRO, eta=eta,
                                         rho=rho, **options).final,
            "old": lambda: integrate(old, **options).final,
            "new": lambda: integrate(new, **options).final}
    finals = {way: run() for way, run in ways.items()}
    best = {way: math.inf for way in ways}
    for _ in range(3):
        for way, run in ways.items():
            start = time.process_time()
            run()
            best[way] = min(best[way], time.process_time() - start)
    us = {way: 1e6 * t / (chains * steps) for way, t in best.items()}
    return (f"{n:>4} {dim:>3} {us['hand']:>8.3f} {us['old']:>8.3f} {us['old'] / us['hand']:>7.2f}x "
            f"{us['new']:>8.3f} {us['new'] / us['hand']:>7.2f}x {compile_s:>10.3f} "
            f"{(finals['old'] - finals['new']).abs().max().item():>10.1e}")


def sde_table(sizes: list[str], chains: int, steps: int) -> list[str]:
    """The ``--sde`` table, rows printed as they come."""
    lines = [f"bench_symbolic --sde: m-USAM B={BATCH}, m={MICRO} on least squares, "
             f"{chains} chains, {steps} steps, {torch.get_num_threads()} thread(s); us per chain-step",
             f"{'N':>4} {'d':>3} {'hand':>8} {'old':>8} {'/hand':>8} {'new':>8} {'/hand':>8} "
             f"{'compile s':>10} {'|old-new|':>10}"]
    print("\n".join(lines), flush=True)
    for size in sizes:
        n, dim = (int(part) for part in size.split(":"))
        lines.append(sde_row(n, dim, chains, steps))
        print(lines[-1], flush=True)
    return lines


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
    parser.add_argument("--sde", nargs="+", metavar="N:d", default=None,
                        help="measure the compiled SDE at these sizes instead (e.g. 8:2 16:4)")
    parser.add_argument("--chains", type=int, default=1000, help="chains of --sde (default 1000)")
    parser.add_argument("--steps", type=int, default=50, help="steps of --sde (default 50)")
    args = parser.parse_args(argv)
    folder = None
    if args.out is not None:
        folder = check_writable(resolve_out(args.out or None, "bench_symbolic"))
    if args.sde:
        write(folder, sde_table(args.sde, args.chains, args.steps))
        return 0
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
    print("\n" + "\n".join(lines))
    write(folder, lines)
    return 0


def write(folder, lines: list[str]) -> None:
    """``folder/bench_symbolic.txt`` with the table, if ``--out`` gave a folder."""
    if folder is not None:
        path = folder / "bench_symbolic.txt"
        atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"))
        print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
