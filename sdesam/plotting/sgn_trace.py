"""Figure of ``experiments/sgn_trace.py``: tr V along training for each optimizer.

One panel per protocol (landscape ensemble; network from the poor minimum; network from the
standard initialisation): mean tr V with a band of one standard error, and a bar panel in the
style of the paper's Table 6 with the end-of-training tr V (mean +- std over seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .escape_speed import colour, label  # noqa: E402

TITLES = {"landscape": "landscape ensemble from the poor minimum (mean over chains)",
          "network-poor": "digits MLP from the poor minimum (mean over seeds)",
          "network-init": "digits MLP from standard init (mean over seeds)"}


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the SGN-trace figure from its data file; returns the PNG and PDF paths."""
    settings = data["settings"]
    protocols = [p for p in TITLES if any(c["protocol"] == p for c in data["curves"])]
    panels = len(protocols) + (1 if data["final"] else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        part = settings["landscape" if protocol == "landscape" else "network"]
        for curve in (c for c in data["curves"] if c["protocol"] == protocol):
            shade = colour(curve["algorithm"], curve["micro"], part["batch"])
            mean, se = np.asarray(curve["trace"]), np.asarray(curve["stderr"])
            ax.plot(curve["step"], mean, color=shade, lw=1.3, label=label(curve, part["batch"]))
            ax.fill_between(curve["step"], mean - se, mean + se, color=shade, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("tr V (exact, full training set)" if protocol != "landscape" else "tr V")
        ax.set_title(TITLES[protocol], fontsize=9)
        ax.legend(fontsize=7)
    if data["final"]:
        ax = axes[0][-1]
        starts = sorted({f["protocol"] for f in data["final"]}, reverse=True)
        batch = settings["network"]["batch"]
        names = [label(f, batch) for f in data["final"] if f["protocol"] == starts[0]]
        width = 0.8 / len(starts)
        for k, start in enumerate(starts):
            rows = [f for f in data["final"] if f["protocol"] == start]
            ax.bar(np.arange(len(rows)) + k * width, [r["trace_mean"] for r in rows], width,
                   yerr=[r["trace_std"] for r in rows], capsize=3, label=start,
                   color=[colour(r["algorithm"], r["micro"], batch) for r in rows],
                   edgecolor="black", hatch="//" if k else None)
        ax.set_xticks(np.arange(len(names)) + width * (len(starts) - 1) / 2, names,
                      rotation=40, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("tr V at the end (mean +- std over seeds)")
        ax.set_title("end of training (Table 6 style); hatched: " + starts[-1], fontsize=9)
    fig.suptitle("Trace of the SGN covariance along training (this project's protocols; "
                 f"{'quick settings' if settings.get('quick') else 'default settings'})")
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths
