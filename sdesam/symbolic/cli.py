"""sdesam derive: derive a SAM-family rule's SDE with sympy and verify it.

Examples:
  sdesam derive m-usam                           # built-in 2-D example, N=4, B=4, m=2
  sdesam derive m-usam --losses generic --batch B --micro m --sampling without-replacement
  sdesam derive usam --order 2 --latex
  sdesam derive rw-sam --lam 2                   # RW-SAM, Gibbs weights at lam = 2

Exit status 0 when every check holds; 1 when the derived drift does not equal its closed form
(or, for the SAM variants, -grad(f + rho E|grad f_S|); for RW-SAM and scaled rules,
-grad f - rho E[H_S u_S]), or the rho = 0 diffusion is not SGD's c(B) V; 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time

import sympy

from ..algorithms import SAMPLING_SCHEMES
from .. import algorithms
from .derivation import GENERIC, Derivation, derive, symbolic_support
from .examples import example_losses

LOSS_CHOICES = ("example", "example-1d", GENERIC)


def _temperature(text: str) -> float | int | sympy.Symbol:
    """RW-SAM's lam: a number (an integer stays exact) or a name that becomes a symbol."""
    if text.isidentifier():
        return sympy.Symbol(text, nonnegative=True)
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or a symbol name; got {text!r}")


def _size(text: str) -> int | sympy.Symbol:
    """An integer size, or a name that becomes a positive integer symbol (generic losses)."""
    if text.isdigit():
        return int(text)
    if text.isidentifier():
        return sympy.Symbol(text, positive=True, integer=True)
    raise argparse.ArgumentTypeError(f"expected a positive integer or a symbol name; got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sdesam derive``."""
    parser.add_argument("algorithm", metavar="RULE", choices=algorithms.rule_names(symbolic_support), help="rule to derive")
    parser.add_argument("--losses", choices=LOSS_CHOICES, default="example",
                        help="built-in 2-D or 1-D example with N=4 non-quadratic per-sample "
                             "losses, or 'generic' (any smooth losses; result in f and SGN "
                             "moments) (default: example)")
    parser.add_argument("--batch", type=_size, default=4,
                        help="mini-batch size B; a name (e.g. B) with --losses generic (default 4)")
    parser.add_argument("--micro", type=_size, default=None,
                        help="micro-batch size m for m-usam / m-sam (default: 2 for them)")
    parser.add_argument("--n", type=_size, default=None,
                        help="number of samples N for --losses generic (default: the symbol N)")
    parser.add_argument("--sampling", choices=SAMPLING_SCHEMES, default="with-replacement")
    parser.add_argument("--order", type=int, default=1,
                        help="order in rho of the drift; eta enters from 2 (default 1)")
    parser.add_argument("--lam", type=_temperature, default=None,
                        help="inverse temperature of the Gibbs weights, for rules that take it "
                             "(rw-sam): a number or a symbol name (default: the symbol lambda)")
    parser.add_argument("--latex", action="store_true", help="also print the SDE as LaTeX")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over the enumerated index sets (default: on when "
                             "stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    """Derive, print the result and its checks; non-zero exit if a check fails."""
    rule = algorithms.get_rule(args.algorithm)
    micro = args.micro if args.micro is not None or not rule.micro else 2
    algorithms.check_keywords(rule, micro=micro, lam=args.lam)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if args.losses == GENERIC:
        x, y = sympy.symbols("x y", real=True)
        losses, variables, label = GENERIC, [x, y], "generic smooth per-sample losses f_i(x, y)"
    else:
        losses, variables = example_losses(1 if args.losses == "example-1d" else 2)
        label = "built-in example, N=4:\n" + "\n".join(f"    f_{i}= {l}" for i, l in enumerate(losses))
    start = time.perf_counter()
    d = derive(rule.name, losses, variables, batch=args.batch, micro=micro if rule.micro else None,
               sampling=args.sampling, order=args.order, n=args.n, lam=args.lam, progress=progress)
    seconds = time.perf_counter() - start
    print(f"{rule.name}: {rule.description}")
    print(f"losses: {label}")
    print(f"batch={d.batch}" + (f", micro={d.micro}" if rule.micro else "")
          + (f", lam={d.lam}" if rule.weighted else "")
          + f", sampling={d.sampling}, order={d.order}, expectations by {d.expectations}")
    _print_matrix("drift b(x)", d.drift, variables)
    _print_matrix(f"diffusion Sigma(x) (to rho^{d.diffusion_order})", d.diffusion, variables,
                  square=True)
    for note in d.notes:
        print(f"note: {note}")
    ok = _report_checks(d)
    print(f"derived in {seconds:.2f} s")
    if args.latex:
        print("\nLaTeX:\n" + d.latex())
    return 0 if ok else 1


def _print_matrix(title: str, matrix: sympy.Matrix, variables: list, square: bool = False) -> None:
    print(title + ":")
    names = [str(v) for v in variables]
    for i, entry in enumerate(matrix):
        index = f"{names[i // len(names)]}{names[i % len(names)]}" if square else names[i]
        print(f"  [{index}] {entry}")


def _report_checks(d: Derivation) -> bool:
    ok = True
    if d.reference is not None:
        what = "closed form" if d.closed_form is not None else d.reference_name
        if d.closed_form is not None and d.rule.ascent != "none" and d.order == 1:
            print(f"closed form: -grad(f + rho/2 |grad f|^2 + c rho/2 tr V), c = {d.noise_factor}")
        verified = d.verify()
        ok &= verified
        print(f"drift equals {what}: {verified}")
    else:
        print(f"no closed form to compare with at order {d.order}")
    if d.degenerate is not None:
        print(f"degenerate derivation: {d.degenerate}")
    leading = d.verify_diffusion()
    ok &= leading
    c = sympy.simplify(d.sgd_diffusion[0] / d.family.covariance_V()[0]) if d.family.covariance_V()[0] != 0 else 0
    print(f"diffusion at rho=0 equals SGD's c(B) V, c(B) = {c}: {leading}")
    return bool(ok)

