"""sdesam derive: derive a SAM-family rule's SDE with sympy and verify it.

Examples:
  sdesam derive m-usam                           # built-in 2-D example, N=4, B=4, m=2
  sdesam derive m-usam --losses generic --batch B --micro m --sampling without-replacement
  sdesam derive usam --order 2 --latex
  sdesam derive rw-sam --lam 2                   # RW-SAM, Gibbs weights at lam = 2
  sdesam derive rw-sam --lam 2 --out runs/rw     # the full expressions in runs/rw/rw-sam.txt, .tex

Entries longer than a few screen lines are summarised (their rho^0 part and their length);
--out DIR writes them in full, with the LaTeX, to DIR/RULE.txt and DIR/RULE.tex.

Exit status 0 when every check holds; 1 when the derived drift does not equal its closed form
(or, for the SAM variants, -grad(f + rho E|grad f_S|); for RW-SAM and scaled rules,
-grad f - rho E[H_S u_S]), or the rho = 0 diffusion is not SGD's c(B) V; 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sympy

from .. import algorithms, layers, validation
from ..algorithms import SAMPLING_SCHEMES
from ..experiment.outputs import check_writable
from ..experiment.records import atomic_write
from ..validation import InputError
from .derivation import GENERIC, derive
from .examples import example_losses
from .listing import check_lines, result_lines

LOSS_CHOICES = ("example", "example-1d", GENERIC)


def _temperature(text: str) -> float | int | sympy.Symbol:
    """RW-SAM's lam: a number (an integer stays exact; nan and inf are numbers, refused later
    by the range check) or a name that becomes a symbol."""
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        if text.isidentifier():
            return sympy.Symbol(text, nonnegative=True)
    raise argparse.ArgumentTypeError(f"expected a number >= 0 or a symbol name; got {text!r}")


def _size(text: str) -> int | sympy.Symbol:
    """An integer size, or a name that becomes a positive integer symbol (generic losses)."""
    if text.isdigit():
        return int(text)
    if text.isidentifier():
        return sympy.Symbol(text, positive=True, integer=True)
    raise argparse.ArgumentTypeError(f"expected a positive integer or a symbol name; got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sdesam derive`` (rule choices read from the registry as the parser is built)."""
    rules = layers.rules_for("symbolic")
    parser.add_argument("algorithm", metavar="RULE", choices=rules,
                        help="rule to derive, one of: " + ", ".join(rules))
    parser.add_argument("--losses", choices=LOSS_CHOICES, default="example",
                        help="built-in 2-D or 1-D example with N=4 non-quadratic per-sample "
                             "losses, or 'generic' (any smooth losses; result in f and SGN "
                             "moments) (default: example)")
    parser.add_argument("--batch", type=_size, default=4,
                        help="mini-batch size B; a name (e.g. B) with --losses generic (default 4)")
    parser.add_argument("--micro", type=_size, default=None,
                        help="micro-batch size m for m-usam / m-sam (default: 2 for them)")
    parser.add_argument("--n", type=_size, default=None,
                        help="number of samples N, for --losses generic only (default: the "
                             "symbol N; the built-in examples have N=4)")
    parser.add_argument("--sampling", choices=SAMPLING_SCHEMES, default="with-replacement")
    parser.add_argument("--order", type=int, default=1,
                        help="order in rho of the drift; eta enters from 2 (default 1)")
    parser.add_argument("--lam", type=_temperature, default=None,
                        help="inverse temperature of the Gibbs weights, for rules that take it "
                             "(rw-sam): a number or a symbol name (default: the symbol lambda)")
    parser.add_argument("--latex", action="store_true", help="also print the SDE as LaTeX")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write the full drift and diffusion (RULE.txt) and their "
                             "LaTeX (RULE.tex) to (default: print only)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over the enumerated index sets (default: on when "
                             "stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    """Derive, print a summary and the checks (and write the full result with ``--out``);
    non-zero exit if a check fails."""
    rule = algorithms.get_rule(args.algorithm)
    micro = args.micro if args.micro is not None or not rule.micro else 2
    algorithms.check_keywords(rule, micro=micro, lam=args.lam)
    if args.lam is not None:
        validation.non_negative_or_symbol("--lam", args.lam)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.losses == GENERIC:
        x, y = sympy.symbols("x y", real=True)
        losses, variables, label = GENERIC, [x, y], "generic smooth per-sample losses f_i(x, y)"
    else:
        losses, variables = example_losses(1 if args.losses == "example-1d" else 2)
        if args.n is not None:
            raise InputError(f"--n sets N for --losses {GENERIC} only; the built-in {args.losses} "
                             f"losses have N={len(losses)} samples (got --n {args.n})")
        label = f"built-in example, N={len(losses)}:\n" + "\n".join(
            f"    f_{i}= {l}" for i, l in enumerate(losses))
    out = check_writable(args.out) if args.out is not None else None
    start = time.perf_counter()
    d = derive(rule, losses, variables, batch=args.batch, micro=micro if rule.micro else None,
               sampling=args.sampling, order=args.order, n=args.n, lam=args.lam, progress=progress)
    seconds = time.perf_counter() - start
    header = [f"{rule.name}: {rule.description}", f"losses: {label}",
              f"batch={d.batch}" + (f", micro={d.micro}" if rule.micro else "")
              + (f", lam={d.lam}" if rule.weighted else "")
              + f", sampling={d.sampling}, order={d.order}, expectations by {d.expectations}"]
    result, summarised = result_lines(d, full=False)
    checks, ok = check_lines(d)
    print("\n".join(header + result + checks + [f"derived in {seconds:.2f} s"]))
    if out is not None:
        full, _ = result_lines(d, full=True)
        for path in (atomic_write(out / f"{rule.name}.txt",
                                  lambda f: f.write("\n".join(header + full + checks) + "\n")),
                     atomic_write(out / f"{rule.name}.tex", lambda f: f.write(d.latex() + "\n"))):
            print(f"wrote {path}")
    elif summarised:
        print("long entries are summarised; --out DIR writes them in full (DIR/"
              f"{rule.name}.txt, with the LaTeX in DIR/{rule.name}.tex), --latex prints the LaTeX, "
              "and sdesam.symbolic.derive returns them")
    if args.latex:
        print("\nLaTeX:\n" + d.latex())
    return 0 if ok else 1
