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

``--family`` adds a second table (issue 19, item 4): SAM, m-SAM (m = 2) and RW-SAM (lam = 2)
on the losses above (B = 4, without replacement) at ``--family-n`` and m-USAM (B = 4, m = 2,
with replacement) derived on least squares at ``--derive-sizes`` N:d, each derived ``old`` --
the package as it was at ``--before`` (extracted with ``git archive``, derived in a subprocess
with sympy's cache cleared first) -- and right after it ``new`` (this checkout, the same way,
so that both see the same load; the load average is written at start and end): the number
of index sets the enumeration visits (``sets``: batches, or micro-batches and their disjoint
pairs; each is one term of the result), CPU seconds, old / new, new milliseconds per index
set, and whether the drift and diffusion are structurally identical ("identical"), else
equal at random points ("equal"); then whether the issue's targets (:data:`TARGETS`) are met,
each way's growth exponent per rule over its largest two N, and that of the index sets and
of the new seconds per index set (at most 0: the cost grows no faster than the enumeration)
and of the result's size (``nodes``: the nodes of its expression trees, counted untimed).
The file ``--out`` writes starts with the command that made it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator
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
from sdesam.symbolic.derivation import matrices_equal
from sdesam.symbolic.families import ConcreteFamily
from sdesam.symbolic.sampling import count_index_sets

BATCH, MICRO, SAMPLING = 4, 2, "without-replacement"

BEFORE = "854cbd1"
"""The commit before issue 19, item 4's symbolic work: ``--family``'s default ``old``."""

FAMILY_OPTIONS = {"sam": {}, "m-sam": {"micro": MICRO}, "rw-sam": {"lam": 2}}
"""The SAM family rules of ``--family`` and their keywords (B, sampling: as above)."""

TARGETS = {("sam", 12, 1): 3.0, ("m-sam", 12, 1): 3.0, ("rw-sam", 12, 1): 3.0,
           ("m-usam", 16, 4): 10.0}
"""Issue 19, item 4's targets: CPU seconds of the new derivation of each (rule, N, d)."""

ROOT = Path(__file__).resolve().parents[2]


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


def least_squares(n: int, dim: int) -> LinearRegression:
    """Least squares on N seeded Gaussian examples in d dimensions (float64)."""
    gen = torch.Generator().manual_seed(0)
    return LinearRegression(torch.randn(n, dim, generator=gen, dtype=torch.float64),
                            torch.randn(n, generator=gen, dtype=torch.float64))


def sde_row(n: int, dim: int, chains: int, steps: int) -> str:
    """One ``--sde`` row: hand, old and new microseconds per chain-step (best of 3)."""
    problem = least_squares(n, dim)
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


Case = tuple[str, int, int]
"""A ``--family`` derivation: (rule, N, d); d = 1 is the losses of :func:`losses_of`."""


def family_cases(ns: list[int], sizes: list[str]) -> list[Case]:
    """The SAM family at every N of ``ns``, then m-USAM at every N:d of ``sizes``."""
    cases = [(rule, n, 1) for rule in FAMILY_OPTIONS for n in ns]
    return cases + [("m-usam", *(int(part) for part in size.split(":"))) for size in sizes]


def derive_case(case: Case) -> tuple[float, sympy.Matrix, sympy.Matrix]:
    """(CPU seconds, drift, diffusion) of one case, sympy's cache cleared first."""
    rule, n, dim = case
    if rule in FAMILY_OPTIONS:
        losses, variables = losses_of(n)
        options = dict(batch=BATCH, sampling=SAMPLING, **FAMILY_OPTIONS[rule])
    else:
        losses, variables = least_squares(n, dim).sympy_form()
        options = dict(batch=BATCH, micro=MICRO)
    clear_cache()
    start = time.process_time()
    d = derive(rule, losses, variables, **options)
    return time.process_time() - start, d.drift, d.diffusion


@contextlib.contextmanager
def package_at(rev: str) -> Iterator[str]:
    """A temporary folder holding the package as it was at ``rev`` (``git archive``)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sdesam"],
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
        yield folder


def derive_before(case: Case, folder: str) -> tuple[float, sympy.Matrix, sympy.Matrix]:
    """:func:`derive_case` with the package in ``folder`` (:func:`package_at`): first on the
    path of a subprocess running this script's ``--worker``."""
    results = Path(folder) / "results.pkl"
    subprocess.run([sys.executable, __file__, "--worker", ",".join(map(str, case)),
                    str(results)], check=True, env={**os.environ, "PYTHONPATH": folder})
    return pickle.loads(results.read_bytes())


def worker(spec: str, out: str) -> int:
    """``--worker``: derive the case ``rule,N,d`` with whatever sdesam is on the path and
    pickle the result to ``out`` (how :func:`derive_before` runs the old package)."""
    rule, n, dim = spec.split(",")
    Path(out).write_bytes(pickle.dumps(warm_derive_case((rule, int(n), int(dim)))))
    return 0


def warm_derive_case(case: Case) -> tuple[float, sympy.Matrix, sympy.Matrix]:
    """:func:`derive_case` after an untimed one of the same rule at N = 4, d = 1, so that what
    a fresh process loads on first use is not timed (old and new alike)."""
    derive_case((case[0], 4, 1))
    return derive_case(case)


def sameness(new: tuple, old: tuple) -> str:
    """"identical" (structurally), else "equal" (at random points), else "DIFFERENT"."""
    if new[1] == old[1] and new[2] == old[2]:
        return "identical"
    equal = matrices_equal(new[1], old[1]) and matrices_equal(new[2], old[2])
    return "equal" if equal else "DIFFERENT"


def index_sets(case: Case) -> int | None:
    """How many index sets the enumerated derivation of a SAM-family ``case`` visits (the
    number of batch terms its drift and diffusion hold); None for the m-USAM rows, which go
    through the SGN moments."""
    rule, n, _ = case
    if rule not in FAMILY_OPTIONS:
        return None
    micro = FAMILY_OPTIONS[rule].get("micro")
    return count_index_sets(n, micro or BATCH, SAMPLING, pairs=micro is not None)


def result_nodes(drift: sympy.Matrix, diffusion: sympy.Matrix) -> int:
    """The size of a result: the nodes of its expression trees (a repeated subtree counted
    each time it occurs, as printing or evaluating it meets it)."""
    return sum(1 for entry in (*drift, *diffusion) for _ in sympy.preorder_traversal(entry))


def exponent(seconds: dict[int, float]) -> str:
    """The exponent k of seconds ~ N^k over the largest two N, or '-'."""
    if len(seconds) < 2:
        return "-"
    low, high = sorted(seconds)[-2:]
    return f"{math.log(seconds[high] / seconds[low]) / math.log(high / low):.2f} (N={low}..{high})"


def target_line(new: dict[Case, float]) -> str:
    """Each of :data:`TARGETS` this run measured: the new seconds and whether it is met."""
    cells = [f"{rule} N={n} d={dim} {new[rule, n, dim]:.2f} s <= {limit:g} s "
             f"{'met' if new[rule, n, dim] <= limit else 'NOT met'}"
             for (rule, n, dim), limit in TARGETS.items() if (rule, n, dim) in new]
    return "targets (new): " + ("; ".join(cells) if cells else "none measured")


def family_table(ns: list[int], sizes: list[str], rev: str) -> list[str]:
    """The ``--family`` table, rows printed as they come: each case derived by the old
    package (a subprocess) and at once by this checkout, so that both see the same load."""
    cases = family_cases(ns, sizes)
    lines = [f"bench_symbolic --family: SAM, m-SAM (m={MICRO}), RW-SAM (lam=2) on the d=1 losses, "
             f"B={BATCH}, {SAMPLING}; m-USAM (B={BATCH}, m={MICRO}, with-replacement) on least "
             f"squares at N:d; order 1, sympy {sympy.__version__}; CPU seconds, old = the package "
             f"at {rev}; load average {os.getloadavg()[0]:.1f} at the start",
             f"{'rule':<7} {'N':>3} {'d':>2} {'sets':>6} {'nodes':>7} {'old':>9} {'new':>9} "
             f"{'old/new':>8} {'new ms/set':>10}  result"]
    print("\n".join(lines), flush=True)
    seconds: dict[tuple[str, str], dict[int, float]] = {}
    with package_at(rev) as folder:
        for case in cases:
            old, new = derive_before(case, folder), warm_derive_case(case)
            rule, n, dim = case
            seconds.setdefault((rule, "old"), {})[n] = old[0]
            seconds.setdefault((rule, "new"), {})[n] = new[0]
            sets, nodes = index_sets(case), result_nodes(new[1], new[2])
            seconds.setdefault((rule, "nodes"), {})[n] = nodes
            if sets is not None:
                seconds.setdefault((rule, "sets"), {})[n] = sets
                seconds.setdefault((rule, "new per set"), {})[n] = new[0] / sets
            per_set = f"{1e3 * new[0] / sets:>10.2f}" if sets else f"{'-':>10}"
            lines.append(f"{rule:<7} {n:>3} {dim:>2} {sets or '-':>6} {nodes:>7} {old[0]:>9.2f} "
                         f"{new[0]:>9.2f} {old[0] / new[0]:>7.1f}x {per_set}  "
                         f"{sameness(new, old)}")
            print(lines[-1], flush=True)
    lines.append(target_line({case: seconds[case[0], "new"][case[1]] for case in cases}))
    lines.append("growth N^k: " + "; ".join(
        f"{rule} old {exponent(seconds[rule, 'old'])}, new {exponent(seconds[rule, 'new'])}"
        for rule in dict.fromkeys(case[0] for case in cases)))
    lines.append("growth N^k of the index sets, the new seconds per index set (<= 0: linear in "
                 "the enumeration) and the result's nodes: " + "; ".join(
                     f"{rule} sets {exponent(seconds[rule, 'sets'])}, per set "
                     f"{exponent(seconds[rule, 'new per set'])}, nodes "
                     f"{exponent(seconds[rule, 'nodes'])}"
                     for rule in FAMILY_OPTIONS if (rule, "sets") in seconds))
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\n".join(lines[-4:]), flush=True)
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
    parser.add_argument("--family", action="store_true",
                        help="also the SAM family and m-USAM-on-least-squares table, old vs new")
    parser.add_argument("--family-n", type=int, nargs="+", default=[4, 8, 12],
                        help="N of --family's SAM, m-SAM and RW-SAM rows (default: 4 8 12)")
    parser.add_argument("--derive-sizes", nargs="*", metavar="N:d", default=["8:2", "16:4"],
                        help="N:d of --family's m-USAM rows (default: 8:2 16:4)")
    parser.add_argument("--before", default=BEFORE,
                        help=f"the git revision --family's old way runs (default {BEFORE})")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    folder = None
    if args.out is not None:
        folder = check_writable(resolve_out(args.out or None, "bench_symbolic"))
    command = " ".join(["python experiments/benchmarks/bench_symbolic.py",
                        *(sys.argv[1:] if argv is None else argv)])
    if args.sde:
        write(folder, [f"command: {command}"] + sde_table(args.sde, args.chains, args.steps))
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
    if args.family:
        lines += [""] + family_table(args.family_n, args.derive_sizes, args.before)
    write(folder, [f"command: {command}"] + lines)
    return 0


def write(folder, lines: list[str]) -> None:
    """``folder/bench_symbolic.txt`` with the table, if ``--out`` gave a folder."""
    if folder is not None:
        path = folder / "bench_symbolic.txt"
        atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"))
        print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
