"""A derivation as text for people: summarised for the terminal, in full for a file.

RW-SAM's drift on the built-in example is two entries of about 60 000 characters each; printed
whole it buries the settings and the checks. The summary keeps every entry up to
:data:`SUMMARY_WIDTH` characters and, for a longer one, prints its rho^0 part (short: the
SGD drift) and the length of the whole; the full expressions stay in the
:class:`~sdesam.symbolic.derivation.Derivation` object, its LaTeX and ``sdesam derive --out``.
"""

from __future__ import annotations

import sympy

from .derivation import Derivation
from .symbols import rho

SUMMARY_WIDTH = 2000
"""Characters beyond which an entry is summarised on the terminal (a few screen lines)."""


def entry_text(entry: sympy.Expr, full: bool) -> tuple[str, bool]:
    """An entry's text and whether it was summarised (never when ``full``)."""
    text = str(entry)
    if full or len(text) <= SUMMARY_WIDTH:
        return text, False
    leading = str(sympy.sympify(entry).subs(rho, 0))
    size = f"{len(text):,} characters in full"
    if len(leading) > SUMMARY_WIDTH:
        return f"({size})", True
    return f"{leading} + O(rho) terms ({size})", True


def matrix_lines(title: str, matrix: sympy.Matrix, variables: list[sympy.Symbol], full: bool,
                 square: bool = False) -> tuple[list[str], bool]:
    """``title:`` then one line per entry, indexed by variable names; and whether any entry
    was summarised."""
    names = [str(v) for v in variables]
    lines, summarised = [title + ":"], False
    for i, entry in enumerate(matrix):
        index = f"{names[i // len(names)]}{names[i % len(names)]}" if square else names[i]
        text, short = entry_text(entry, full)
        summarised |= short
        lines.append(f"  [{index}] {text}")
    return lines, summarised


def result_lines(d: Derivation, full: bool) -> tuple[list[str], bool]:
    """Drift, diffusion and notes of ``d``; and whether any entry was summarised."""
    drift, short_drift = matrix_lines("drift b(x)", d.drift, d.variables, full)
    diffusion, short_diffusion = matrix_lines(
        f"diffusion Sigma(x) (to rho^{d.diffusion_order})", d.diffusion, d.variables, full,
        square=True)
    notes = [f"note: {note}" for note in d.notes]
    return drift + diffusion + notes, short_drift or short_diffusion


def check_lines(d: Derivation) -> tuple[list[str], bool]:
    """The checks of ``d`` -- drift against its reference, rho = 0 diffusion against SGD's --
    as lines, and whether they all hold."""
    lines, ok = [], True
    if d.reference is not None:
        kind = "closed form" if d.closed_form is not None else "first-order form"
        verified = d.verify()
        ok &= verified
        lines += [f"{kind}: {d.formula}", f"drift equals the {kind}: {verified}"]
    else:
        lines.append(f"no closed form to compare with at order {d.order}")
    if d.degenerate is not None:
        lines.append(f"degenerate derivation: {d.degenerate}")
    if not d.sgd_noise:
        lines.append("diffusion at rho=0: the covariance of the Gibbs-weighted gradient "
                     "(descent_weights='all'), not SGD's c(B) V")
        return lines, bool(ok)
    leading = d.verify_diffusion()
    ok &= leading
    V = d.family.covariance_V()
    c = sympy.simplify(d.sgd_diffusion[0] / V[0]) if V[0] != 0 else 0
    lines.append(f"diffusion at rho=0 equals SGD's c(B) V, c(B) = {c}: {leading}")
    return lines, bool(ok)
