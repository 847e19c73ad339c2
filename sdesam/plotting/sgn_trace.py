"""Figure of ``experiments/sgn_trace.py``: tr V along training for each optimizer.

One panel per protocol (landscape ensemble; network from the poor minimum; network from the
standard initialisation): mean tr V with a band of one standard error, and a bar panel in the
style of the paper's Table 6 with the end-of-training tr V (mean +- std over seeds), and per
network start the per-seed paired differences of the final tr V against SGD and SAM. Reads
only the record schema (:mod:`sdesam.experiment.records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .style import colour, label, paired_panel, save, settings_note  # noqa: E402

TITLES = {"landscape": "landscape ensemble from the poor minimum (mean over chains)",
          "network-poor": "digits MLP from the poor minimum (mean over seeds)",
          "network-init": "digits MLP from standard init (mean over seeds)"}


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the SGN-trace figure from its record; returns the PNG and PDF paths."""
    settings, results = data["settings"], data["results"]
    curves, final = results["curves"], results.get("final", [])
    paired = results.get("final_paired", [])
    protocols = [p for p in TITLES if any(c["protocol"] == p for c in curves)]
    starts = [p for p in TITLES if any(r["protocol"] == p for r in paired)]
    lower = (1 if final else 0) + len(starts)
    columns = max(len(protocols), lower)
    fig, axes = plt.subplots(2 if lower else 1, columns, figsize=(5.6 * columns, 4.8 * (2 if lower else 1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, protocol in zip(axes[0], protocols):
        ax.set_visible(True)
        batch = settings["landscape" if protocol == "landscape" else "network"]["batch"]
        for curve in (c for c in curves if c["protocol"] == protocol):
            shade = colour(curve, batch)
            mean, se = np.asarray(curve["trace_V"]), np.asarray(curve["trace_V_stderr"])
            ax.plot(curve["step"], mean, color=shade, lw=1.3, label=label(curve, batch))
            ax.fill_between(curve["step"], mean - se, mean + se, color=shade, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("tr V (exact, full training set)" if protocol != "landscape" else "tr V")
        ax.set_title(TITLES[protocol], fontsize=9)
        ax.legend(fontsize=7)
    lower_axes = list(axes[-1])
    if final:
        lower_axes[0].set_visible(True)
        _final_panel(lower_axes.pop(0), final, settings["network"]["batch"])
    for ax, start in zip(lower_axes, starts):
        ax.set_visible(True)
        rows = [r for r in paired if r["protocol"] == start]
        paired_panel(ax, rows, settings["network"]["batch"], "tr V at the end")
        ax.set_title(f"{start}: final tr V paired by seed (same start and batches; "
                     f"n={rows[0]['n']})\nrule minus SGD / SAM, mean and 95% t interval", fontsize=9)
    fig.suptitle(f"Trace of the SGN covariance along training (this project's protocols; "
                 f"{settings_note(settings)})")
    fig.tight_layout()
    return save(fig, out_stem)


def _final_panel(ax, final: list[dict[str, Any]], batch: int) -> None:
    """Bars of the end-of-training tr V per rule, one group per start (Table 6 style)."""
    starts = sorted({f["protocol"] for f in final}, reverse=True)
    names = [label(f, batch) for f in final if f["protocol"] == starts[0]]
    width = 0.8 / len(starts)
    for k, start in enumerate(starts):
        rows = [f for f in final if f["protocol"] == start]
        ax.bar(np.arange(len(rows)) + k * width, [r["trace_V"] for r in rows], width,
               yerr=[r["trace_V_std"] for r in rows], capsize=3, label=start,
               color=[colour(r, batch) for r in rows], edgecolor="grey",
               hatch="//" if k else None)
    ax.set_xticks(np.arange(len(names)) + width * (len(starts) - 1) / 2, names,
                  rotation=40, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("tr V at the end (mean +- std over seeds)")
    ax.set_title(f"tr V at the end of training (Table 6 style)\nplain: {starts[0]}, "
                 f"hatched: {starts[-1]}", fontsize=9)
