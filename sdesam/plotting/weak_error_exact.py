"""Figure of ``experiments/weak_error_exact.py``: the exact weak errors of the affine rules.

Reads only the record schema (``results["errors"]``, ``results["expansions"]``). One column per
sampling scheme. Top: ``|E f(x_K) - E f(X_T)|`` against eta on log axes (solid: the full SDE,
dashed: without the tr V term) with reference slopes 1 and 1/2. Bottom: the signed errors
divided by sqrt(eta) against sqrt(eta), whose intercept is the sqrt(eta) coefficient a; the
predicted a of the runs without the term are the dotted lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..algorithms import get_rule  # noqa: E402
from .style import save, settings_note  # noqa: E402


def run_name(row: dict[str, Any]) -> str:
    """A run's display name: the rule's label with its micro-batch size (m = B for USAM)."""
    rule = get_rule(row["rule"])
    if rule.micro:
        return f"{rule.label} m={row['micro']}"
    return f"{rule.label} (m=B={row['batch']})" if rule.ascent == "part" else rule.label


# ---------------------------------------------------------------------- the figure
PALETTE = ("black", "tab:orange", "tab:green", "tab:purple", "tab:blue", "tab:red", "tab:brown")
"""One colour per run, in the order of ``settings["runs"]``."""


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Top row: |E f(x_K) - E f(X_T)| against eta on log axes per sampling scheme (solid: the
    full SDE, dashed: without the tr V term) with reference slopes 1 and 1/2. Bottom row: the
    same signed errors divided by sqrt(eta), against sqrt(eta): the intercept is the sqrt(eta)
    coefficient a; the predicted a of the runs without the term are the dotted lines."""
    settings, results = data["settings"], data["results"]
    name, batch = settings["headline_test_fn"], settings["batch"]
    samplings = settings["samplings"]
    colours = {(rule, micro): PALETTE[k % len(PALETTE)]
               for k, (rule, micro) in enumerate(settings["runs"])}
    widths = {(rule, micro): max(3.0 - 0.5 * k, 1.2)       # earlier runs wider, so a curve
              for k, (rule, micro) in enumerate(settings["runs"])}  # drawn over one shows it
    fig, axes = plt.subplots(2, len(samplings), figsize=(5.8 * len(samplings), 9.0), squeeze=False)
    for column, sampling in enumerate(samplings):
        rows = [r for r in results["errors"] if r["sampling"] == sampling]
        top, bottom = axes[0, column], axes[1, column]
        for key in dict.fromkeys((r["rule"], r["micro"]) for r in rows):
            for variant in ("full", "without_noise_term"):
                chosen = sorted((r for r in rows if (r["rule"], r["micro"]) == key
                                 and r["variant"] == variant), key=lambda r: r["eta"])
                if not chosen:
                    continue
                full = variant == "full"
                eta = np.array([r["eta"] for r in chosen])
                error = np.array([r[f"error_{name}"] for r in chosen])
                kwargs = {"color": colours[key], "ls": "-" if full else "--", "lw": widths[key],
                          "marker": "o" if full else "s", "ms": 4 if full else 5,
                          "fillstyle": "full" if full else "none"}
                text = run_name(chosen[0]) + ("" if full else ", SDE without tr V term")
                top.loglog(eta, np.abs(error), label=text if column == 0 else None, **kwargs)
                bottom.semilogx(np.sqrt(eta), error / np.sqrt(eta), **kwargs)
        for fit in (r for r in results["expansions"] if r["sampling"] == sampling
                    and r["test_fn"] == name and r["variant"] != "full"):
            bottom.axhline(fit["predicted_a"], color=colours[(fit["rule"], fit["micro"])],
                           ls=":", lw=1.2)
        _reference_slopes(top, rows, name, column == 0)
        top.set_xlabel("eta  (rho = kappa sqrt(eta))")
        top.set_ylabel(f"|E {name}(x_K) - E {name}(X_T)|")
        top.set_title(f"{sampling}: exact weak error at T={settings['horizon']:g}", fontsize=10)
        top.grid(True, which="major", alpha=0.3)
        bottom.axhline(0.0, color="grey", lw=0.6)
        bottom.set_xlabel("sqrt(eta)")
        bottom.set_ylabel(f"signed error / sqrt(eta)   ({name})")
        bottom.set_title(f"{sampling}: intercept = sqrt(eta) coefficient a;\n"
                         "dotted: predicted a without the tr V term", fontsize=10)
        bottom.grid(True, alpha=0.3)
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Exact weak errors of the affine rules on a {settings['dim']}-D quadratic, "
                 f"N={settings['n']}, B={batch}, kappa={settings['kappa']:g} "
                 f"({settings_note(settings)})", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, out_stem)


def _reference_slopes(ax: Any, rows: list[dict[str, Any]], name: str, labelled: bool) -> None:
    """Grey reference lines of slope 1 (beside the full SDEs' errors) and 1/2 (beside the
    errors without the tr V term), anchored at the smallest eta so they never cross the data."""
    low, high = min(r["eta"] for r in rows), max(r["eta"] for r in rows)
    grid = np.array([low, high])
    for slope, variant, factor, ls in ((1.0, "full", 0.3, (0, (6, 3))),
                                       (0.5, "without_noise_term", 2.5, (0, (1, 2)))):
        at_low = [abs(r[f"error_{name}"]) for r in rows if r["eta"] == low and r["variant"] == variant]
        if at_low:
            anchor = factor * (min(at_low) if factor < 1 else max(at_low))
            ax.loglog(grid, anchor * (grid / low) ** slope, color="grey", ls=ls, lw=1.2,
                      label=f"reference slope {slope:g}" if labelled else None)
