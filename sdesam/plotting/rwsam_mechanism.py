"""Figure of ``experiments/rwsam_mechanism.py``: push along -grad tr V, equivalent m and the
effective sample size of the Gibbs weights against lam, one column per problem (its first
point), m-SAM's push at every m as reference lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .style import save  # noqa: E402
import numpy as np  # noqa: E402

from ..algorithms import get_rule  # noqa: E402

COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
TITLES = {"landscape": "1-D landscape", "logistic": "logistic regression, 30% flipped labels",
          "network": "digits MLP"}


def _positions(lams: list[float]) -> tuple[np.ndarray, float]:
    """Log-axis positions of the lam values; lam = 0 (uniform weights) sits a factor 4 left
    of the smallest positive value. Returns the positions and that stand-in."""
    positive = [v for v in lams if v > 0]
    zero_at = min(positive) / 4 if positive else 1.0
    return np.array([v if v > 0 else zero_at for v in lams], dtype=float), zero_at


def _lam_axis(ax: Any, lams: list[float], zero_at: float) -> None:
    """The shared lam axis: logarithmic, with lam = 0 labelled at its stand-in position."""
    ax.set_xscale("log")
    ticks = sorted({zero_at, *[v for v in lams if v > 0]})
    ax.set_xticks(ticks, ["0" if t == zero_at else f"{t:g}" for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("lam x mean per-sample |grad f_i|   (0: uniform weights = SAM)", fontsize=8)


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the figure from the data file; returns the PNG and PDF paths."""
    rows = data["results"]["diagnosis"]
    points = data["results"]["points"]
    firsts = []
    for point in points:
        if point["problem"] not in [p["problem"] for p in firsts]:
            firsts.append(point)
    fig, axes = plt.subplots(3, len(firsts), figsize=(5.6 * len(firsts), 11.5), squeeze=False)
    for column, point in enumerate(firsts):
        here = [r for r in rows if r["problem"] == point["problem"] and r["point"] == point["point"]]
        batch = point["batch"]
        weighted = []
        for r in here:
            if get_rule(r["rule"]).weighted and r["rule"] not in weighted:
                weighted.append(r["rule"])
        push_ax, m_ax, ess_ax = axes[:, column]
        msam = sorted((r["micro"], r["push"], r["push_stderr"]) for r in here
                      if get_rule(r["rule"]).micro and get_rule(r["rule"]).normalized)
        for m, push, _ in msam:
            push_ax.axhline(push, color="grey", lw=0.8, ls="-" if m == batch else ":")
            push_ax.annotate(f"m-SAM m={m}" + (" (=SAM)" if m == batch else ""), (1.0, push),
                             xycoords=("axes fraction", "data"), fontsize=6.5, color="dimgrey",
                             ha="right", va="bottom")
        lams = sorted({r["lam_scale"] for r in here if r["lam_scale"] is not None})
        _, zero_at = _positions(lams)
        for k, name in enumerate(weighted):
            series = sorted((r for r in here if r["rule"] == name), key=lambda r: r["lam_scale"])
            lam, _ = _positions([r["lam_scale"] for r in series])
            lam = lam * (1 + 0.04 * k)                       # keep coinciding curves apart
            rule = get_rule(name)
            label = rule.label + (" (bias: see data)" if rule.descent_weights == "all" else "")
            style = dict(color=COLOURS[k % len(COLOURS)], marker=MARKERS[k % len(MARKERS)],
                         ms=4 + 2 * (k % 2), lw=1.2, capsize=2, ls="--" if k % 2 else "-",
                         mfc="none" if k % 2 else None)
            push_ax.errorbar(lam, [r["push"] for r in series], [r["push_stderr"] for r in series],
                             label=label, **style)
            eq = np.array([r["equivalent_m"] if r["equivalent_m"] is not None else np.nan
                           for r in series], dtype=float)
            se = np.array([r["equivalent_m_stderr"] if r["equivalent_m_stderr"] is not None
                           else np.nan for r in series], dtype=float)
            m_ax.errorbar(lam, eq, se, label=label, **style)
            for r, x in zip(series, lam):
                if r["equivalent_m_bound"] == "below_1":
                    m_ax.plot(x, 0.7 * (1 - 0.06 * k), marker="v", color=style["color"], ms=7, ls="none")
                elif r["equivalent_m_bound"] == "above_B":
                    m_ax.plot(x, batch * 1.4 * (1 + 0.1 * k), marker="^", color=style["color"],
                              ms=7, ls="none", mfc="none")
            if k == 0:
                ess_ax.plot(lam, [r["ess"] for r in series], color="black", marker="o", ms=4)
        push_ax.axhline(0, color="black", lw=0.6)
        strongest = max((abs(c[1]) for c in msam), default=0.0)
        largest = max((abs(r["push"]) for r in here if r["rule"] in weighted), default=0.0)
        if strongest > 0 and largest > 4 * strongest:   # keep m-SAM's range readable
            push_ax.set_yscale("symlog", linthresh=strongest)
        push_ax.set_ylabel("push along -grad tr V (per unit rho)", fontsize=8)
        push_ax.set_title(f"{TITLES.get(point['problem'], point['problem'])} at its "
                          f"{point['point']}\n(B={batch}, {point['sampling']}, "
                          f"{point['batches']} sampled batches; +-1 s.e.)", fontsize=9)
        push_ax.legend(fontsize=7, loc="best")
        m_ax.set_yscale("log")
        m_ax.set_ylim(0.45, batch * 2.4)
        for level in (1, batch):
            m_ax.axhline(level, color="grey", lw=0.8, ls=":")
        m_ax.set_ylabel("equivalent m (m-SAM with the same push)", fontsize=8)
        m_ax.set_title("filled v: stronger than m=1;  open ^: weaker than SAM (m=B)", fontsize=8)
        ess_ax.set_yscale("log")
        ess_ax.set_ylim(0.8, batch * 1.3)
        ess_ax.axhline(batch, color="grey", lw=0.8, ls=":")
        ess_ax.set_ylabel("effective sample size 1/sum p_i^2 (mean over batches)", fontsize=8)
        for ax in (push_ax, m_ax, ess_ax):
            _lam_axis(ax, lams, zero_at)
            ax.grid(alpha=0.3)
    fig.suptitle("Noise-induced first-order drift along -grad tr V:\nRW-SAM readings vs m-SAM "
                 f"({'quick' if data['settings'].get('quick') else 'default'} settings)\n"
                 "push = <noise-induced drift, -grad tr V>/|grad tr V|, > 0 lowers tr V",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out_stem, dpi=110)
