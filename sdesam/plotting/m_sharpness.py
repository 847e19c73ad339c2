"""Figure of ``experiments/m_sharpness.py``: test accuracy, tr V and top Hessian eigenvalue
against the micro-batch size m of m-SAM (SGD and RW-SAM as horizontal bands), and test accuracy
against the optimizer's wall time relative to SAM, where RW-SAM sits at its measured cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .escape_speed import FIXED_COLOURS, colour  # noqa: E402

PANELS = (("test_accuracy", "final test accuracy"), ("trace_V", "final tr V (full training set)"),
          ("hessian_top", "top Hessian eigenvalue (Lanczos)"))


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the m-sharpness figure from its data file; returns the PNG and PDF paths."""
    settings, points = data["settings"], data["points"]
    batch = settings["batch"]
    curve = sorted((p for p in points if p["algorithm"] in ("m-sam", "sam")), key=lambda p: p["micro"])
    fixed = [p for p in points if p["algorithm"] in FIXED_COLOURS]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    m = np.array([p["micro"] for p in curve])
    for ax, (key, title) in zip(axes, PANELS):
        ax.errorbar(m, [p[f"{key}_mean"] for p in curve], yerr=[p[f"{key}_std"] for p in curve],
                    marker="o", capsize=3, color="tab:purple", label="m-SAM (m=B: SAM)")
        for p in fixed:
            shade = FIXED_COLOURS[p["algorithm"]]
            ax.axhline(p[f"{key}_mean"], color=shade, ls="--", label=p["algorithm"].upper())
            ax.axhspan(p[f"{key}_mean"] - p[f"{key}_std"], p[f"{key}_mean"] + p[f"{key}_std"],
                       color=shade, alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(m, [str(v) for v in m])
        ax.set_xlabel("micro-batch size m")
        ax.set_title(f"{title}\nmean +- std over {settings['seeds']} seeds", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    for p in points:
        shade = colour(p["algorithm"], p["micro"], batch)
        text = {"m-sam": f"m={p['micro']}", "sam": "SAM"}.get(p["algorithm"], p["algorithm"].upper())
        ax.errorbar(p["relative_cost"], p["test_accuracy_mean"], yerr=p["test_accuracy_std"],
                    marker="*" if p["algorithm"] == "rw-sam" else "o", ms=10 if p["algorithm"] == "rw-sam" else 6,
                    color=shade, capsize=3)
        ax.annotate(text, (p["relative_cost"], p["test_accuracy_mean"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("optimizer wall time relative to SAM (measured, this CPU)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy against cost: RW-SAM placed at its cost", fontsize=9)
    fig.suptitle(f"m-sharpness on the digits MLP (this project's protocol: lr={settings['lr']}, "
                 f"B={batch}, rho={settings['rho']}, {settings['steps']} steps from standard init; "
                 f"{'quick settings' if settings.get('quick') else 'default settings'})", fontsize=10)
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths
