"""Figure of ``experiments/m_sharpness.py``: test accuracy, tr V and top Hessian eigenvalue
against the micro-batch size m of m-SAM (SAM at m = B; SGD and RW-SAM as horizontal bands), and
test accuracy against the optimizer's wall time relative to SAM, where RW-SAM sits at its
measured cost. Reads only the record schema (:mod:`sdesam.experiment.records`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..algorithms import get_rule  # noqa: E402
from .style import (colour, family_colour, label, m_curve_label, micro_position,  # noqa: E402
                    on_micro_axis, save, settings_note)

PANELS = (("test_accuracy", "final test accuracy"), ("trace_V", "final tr V (full training set)"),
          ("hessian_top", "top Hessian eigenvalue (Lanczos)"))


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the m-sharpness figure from its record; returns the PNG and PDF paths."""
    settings, points = data["settings"], data["results"]["points"]
    batch = settings["batch"]
    curve = sorted((p for p in points if on_micro_axis(p)), key=lambda p: micro_position(p, batch))
    fixed = [p for p in points if not on_micro_axis(p)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    m = np.array([micro_position(p, batch) for p in curve])
    for ax, (key, title) in zip(axes, PANELS):
        ax.errorbar(m, [p[key] for p in curve], yerr=[p[f"{key}_std"] for p in curve],
                    marker="o", capsize=3, color=family_colour(curve[0]["rule"]),
                    label=m_curve_label(curve))
        for p in fixed:
            shade = colour(p, batch)
            ax.axhline(p[key], color=shade, ls="--", label=f"{label(p, batch)} ({p[key]:.4g})")
            ax.axhspan(p[key] - p[f"{key}_std"], p[key] + p[f"{key}_std"], color=shade, alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(m, [str(v) for v in m])
        ax.set_xlabel("micro-batch size m")
        ax.set_title(f"{title}\nmean +- std over {settings['seeds']} seeds", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    for p in points:
        weighted = get_rule(p["rule"]).weighted
        text = f"m={p['micro']}" if get_rule(p["rule"]).micro else get_rule(p["rule"]).label
        ax.errorbar(p["relative_cost"], p["test_accuracy"], yerr=p["test_accuracy_std"],
                    marker="*" if weighted else "o", ms=10 if weighted else 6,
                    color=colour(p, batch), capsize=3)
        ax.annotate(text, (p["relative_cost"], p["test_accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("optimizer wall time relative to SAM (measured, this CPU)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy against cost: RW-SAM placed at its cost", fontsize=9)
    fig.suptitle(f"m-sharpness on the digits MLP (this project's protocol: lr={settings['lr']}, "
                 f"B={batch}, rho={settings['rho']}, {settings['steps']} steps from standard init; "
                 f"{settings_note(settings)})", fontsize=10)
    fig.tight_layout()
    return save(fig, out_stem)
