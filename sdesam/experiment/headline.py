"""The few numbers a run is about, printed when it ends.

An experiment writes its whole result to a data file and a figure; on the terminal it also
prints its headline -- the key rows of what it computed (weak-error orders, exit times, tr V,
pushes, accuracies) -- so a quick run says what it found, not only where it wrote. One format
for every experiment: a title line ``EXPERIMENT headline:`` and one indented
``label  value`` line per row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def number(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, in positional notation from 1e-3 to 1e6
    (``2957``, ``0.0123``) and in exponent notation beyond."""
    magnitude = abs(value)
    if not math.isfinite(value) or magnitude == 0:
        return f"{value:g}"
    if not 1e-3 <= magnitude < 1e6:
        return f"{value:.{digits}g}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(magnitude)))}f}"


def estimate(value: float | None, error: float | None = None, *, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, with ``± error`` when given (``-``: none)."""
    if value is None:
        return "-"
    return number(value, digits) if error is None else f"{number(value, digits)} ± {number(error, 2)}"


def interval(value: float, low: float, high: float, *, digits: int = 3) -> str:
    """``value [low, high]``, each to ``digits`` significant digits."""
    return f"{number(value, digits)} [{number(low, digits)}, {number(high, digits)}]"


def rule_name(row: dict[str, Any]) -> str:
    """A record's rule with its micro-batch and lam when it has them: ``m-sam m=1``."""
    name = str(row["rule"])
    if row.get("micro") is not None:
        name += f" m={row['micro']}"
    if row.get("lam") is not None:
        name += f" lam={row['lam']:g}"
    return name


def print_headline(experiment: str, rows: Iterable[tuple[str, str]]) -> None:
    """Print ``experiment``'s headline: one ``label  value`` line per row, labels aligned."""
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0)
    print(f"{experiment} headline:")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
