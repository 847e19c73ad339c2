"""What the theory figures share: one colour and legend text per (rule, m), where a rule sits on
the m axis, and saving a figure as PNG and PDF.

Every fact comes from the rule registry (:func:`sdesam.algorithms.get_rule`), never from a
rule's name: a rule a user registers is drawn like the built-in rule of its family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..algorithms import get_rule  # noqa: E402

FAMILY_COLOURMAPS = {"usam": "viridis", "sam": "cool"}
UNPERTURBED_COLOUR = "black"
WEIGHTED_COLOUR = "tab:red"


def micro_position(row: dict[str, Any], batch: int) -> int | None:
    """Where a result row sits on the micro-batch axis: its ``micro`` for an m-rule, the batch
    for a rule that perturbs along its whole batch (SAM, USAM: m = B), None otherwise."""
    rule = get_rule(row["rule"])
    if rule.micro:
        return row["micro"]
    if rule.ascent == "part":
        return batch
    return None


def on_micro_axis(row: dict[str, Any]) -> bool:
    """Whether the row belongs to an m-curve (an m-rule, or its m = B member SAM / USAM)."""
    return get_rule(row["rule"]).ascent == "part"


def colour(row: dict[str, Any], batch: int) -> Any:
    """One colour per (rule, m): a colour map over m for each family, fixed for SGD-like and
    reweighted rules."""
    rule = get_rule(row["rule"])
    if not rule.perturbed:
        return UNPERTURBED_COLOUR
    if rule.weighted:
        return WEIGHTED_COLOUR
    micro = micro_position(row, batch) or batch
    position = np.log2(micro) / max(np.log2(batch), 1)
    return plt.get_cmap(FAMILY_COLOURMAPS[rule.family])(0.85 * position)


def family_colour(rule_name: str) -> Any:
    """The colour of a whole m-curve (the family's colour map at a middle m)."""
    return plt.get_cmap(FAMILY_COLOURMAPS[get_rule(rule_name).family])(0.45)


def label(row: dict[str, Any], batch: int) -> str:
    """Legend text such as ``m-SAM m=4`` or ``SAM (m=B=16)``."""
    rule = get_rule(row["rule"])
    if rule.micro:
        return f"{rule.label} m={row['micro']}"
    if rule.ascent == "part":
        return f"{rule.label} (m=B={batch})"
    return rule.label


def m_curve_label(rows: list[dict[str, Any]]) -> str:
    """Legend text of an m-curve, e.g. ``m-SAM (SAM at m=B)``."""
    rules = [get_rule(row["rule"]) for row in rows]
    micro = ", ".join(dict.fromkeys(rule.label for rule in rules if rule.micro))
    whole = ", ".join(dict.fromkeys(rule.label for rule in rules if not rule.micro))
    if micro and whole:
        return f"{micro} ({whole} at m=B)"
    return micro or whole


def settings_note(settings: dict[str, Any]) -> str:
    """``quick settings`` or ``default settings``, for a figure's title."""
    return "quick settings" if settings.get("quick") else "default settings"


def save(fig: Any, out_stem: Path, dpi: int = 130) -> list[Path]:
    """Write ``fig`` to ``out_stem.png`` and ``out_stem.pdf``, close it and return the paths."""
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


BASELINE_MARKERS = {"sgd": "o", "sam": "s"}


def paired_panel(ax: Any, rows: list[dict[str, Any]], batch: int, quantity: str) -> None:
    """Paired differences (rule - baseline, mean and 95% t interval) as horizontal error bars,
    one line per rule, one marker per baseline; a pair with fewer than two units is drawn
    without a bar. Zero (no difference) is the dotted line."""
    names = list(dict.fromkeys(label(row, batch) for row in rows))
    baselines = list(dict.fromkeys(row["baseline"] for row in rows))
    for k, baseline in enumerate(baselines):
        for row in (r for r in rows if r["baseline"] == baseline and r["mean"] is not None):
            y = names.index(label(row, batch)) + (k - (len(baselines) - 1) / 2) * 0.3
            low = row["ci_low"] if row["ci_low"] is not None else row["mean"]
            high = row["ci_high"] if row["ci_high"] is not None else row["mean"]
            ax.errorbar(row["mean"], y, xerr=[[row["mean"] - low], [high - row["mean"]]],
                        marker=BASELINE_MARKERS.get(baseline, "^"), color=colour(row, batch),
                        capsize=2, ms=4, ls="none")
        ax.plot([], [], BASELINE_MARKERS.get(baseline, "^"), color="grey",
                label=f"minus {get_rule(baseline).label}")
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference of {quantity}")
    ax.legend(fontsize=7)
