"""Figure of ``experiments/generalization.py``, one column per cell (data set, label noise,
norm): test accuracy against the micro-batch size m of m-SAM (m = B is SAM; SGD and RW-SAM as
bands, mean +- std over seeds); each method's paired difference in test accuracy against SGD
and against SAM with its 95% interval and the design's minimal detectable difference (grey);
and the tuning curves -- validation (solid) and test (dotted) accuracy of every candidate
against rho, and SGD's against its weight decay -- so a reader sees how flat or sharp each
choice was (the chosen value circled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from ..algorithms import get_rule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .style import save  # noqa: E402

BAND_COLOURS = ("tab:gray", "tab:red", "tab:green", "tab:brown")
REFERENCE_STYLES = (("o", "tab:blue"), ("s", "tab:orange"), ("^", "tab:green"))


def _label(row: dict[str, Any]) -> str:
    """The rule's display name, with its m for micro-batch rules."""
    label = get_rule(row["rule"]).label
    return f"{label} m={row['micro']}" if row["micro"] is not None else label


def _on_m_curve(row: dict[str, Any]) -> bool:
    """Whether a row belongs on the accuracy-against-m curve: normalised rules that perturb
    along their own (micro-)batch gradient (m-SAM, and SAM at m = B)."""
    rule = get_rule(row["rule"])
    return rule.normalized and rule.ascent == "part"


def _cell(row: dict[str, Any]) -> tuple[str, float, str]:
    """The cell a row belongs to: (dataset, label_noise, norm)."""
    return row["dataset"], row["label_noise"], row.get("norm", "none")


def _cells(data: dict[str, Any]) -> list[tuple[str, float, str]]:
    """The cells in the order they were run."""
    return list(dict.fromkeys(_cell(row) for row in data["results"]["summary"]))


def _accuracy_panel(ax, rows: list[dict[str, Any]], batch: int) -> None:
    """Test accuracy against m (m-SAM, SAM at m = B) with the SGD and RW-SAM bands."""
    curve = sorted((r for r in rows if _on_m_curve(r) and r["test_acc_mean"] is not None),
                   key=lambda r: r["micro"] if r["micro"] is not None else batch)
    m = [r["micro"] if r["micro"] is not None else batch for r in curve]
    ax.errorbar(m, [r["test_acc_mean"] for r in curve], yerr=[r["test_acc_std"] for r in curve],
                marker="o", capsize=3, color="tab:purple", label="m-SAM (m = B: SAM)")
    for x, r in zip(m, curve):
        ax.annotate(f"rho={r['rho']:.3g}", (x, r["test_acc_mean"]), fontsize=6,
                    textcoords="offset points", xytext=(4, -10))
    bands = [row for row in rows if not _on_m_curve(row) and row["test_acc_mean"] is not None]
    for row, shade in zip(bands, BAND_COLOURS):
        extra = (f", rho={row['rho']:g}, lam={row['lam_multiple']:g}/mean|g_i|" if row["rho"]
                 else f", wd={row['weight_decay']:g}")
        ax.axhline(row["test_acc_mean"], color=shade, ls="--", label=f"{_label(row)}{extra}")
        ax.axhspan(row["test_acc_mean"] - row["test_acc_std"],
                   row["test_acc_mean"] + row["test_acc_std"], color=shade, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(m, [str(v) for v in m])
    ax.margins(x=0.2)
    ax.set_xlabel("micro-batch size m")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=6, loc="lower left")


def _difference_panel(ax, rows: list[dict[str, Any]]) -> None:
    """Paired differences (method - reference) with 95% intervals and the detectable size.

    SGD's own row is left out: SGD - SAM is the negative of SAM - SGD, shown on SAM's row.
    """
    rows = [r for r in rows if get_rule(r["rule"]).perturbed]
    names: list[str] = []
    for row in rows:
        if _label(row) not in names:
            names.append(_label(row))
    references = list(dict.fromkeys(row["reference"] for row in rows))
    spread = 0.3 / max(len(references) - 1, 1)
    labelled: set[str] = set()
    for row in rows:
        k = references.index(row["reference"])
        marker, shade = REFERENCE_STYLES[k % len(REFERENCE_STYLES)]
        text = f"vs {get_rule(row['reference']).label}"
        y = names.index(_label(row)) - 0.15 + k * spread
        mdd = row["minimal_detectable_difference"]
        if mdd is not None:
            ax.plot([-mdd, mdd], [y, y], color="0.82", lw=6, solid_capstyle="butt", zorder=1,
                    label=None if "mdd" in labelled else "+- minimal detectable difference")
            labelled.add("mdd")
        ax.errorbar(row["difference_mean"], y,
                    xerr=[[row["difference_mean"] - row["ci_low"]], [row["ci_high"] - row["difference_mean"]]],
                    marker=marker, color=shade, capsize=3, zorder=2,
                    label=None if text in labelled else f"{text} (95% CI)")
        labelled.add(text)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("test accuracy, method - reference (points)")


def _tuning_panel(ax, rows: list[dict[str, Any]], choices: list[dict[str, Any]],
                  tuned: str) -> None:
    """Validation accuracy (solid, left axis: the score candidates were chosen on) and test
    accuracy (dotted, right axis: never looked at in tuning) of each method's candidates
    against its tuned parameter (log axis), the choice circled; RW-SAM's candidates at other
    lam multiples as crosses, candidates stopped at chance as triangles on the bottom edge.
    Two axes because noisy validation labels put validation accuracy well below test."""
    rows = [r for r in rows if r["tuned"] == tuned]
    test_ax = ax.twinx()
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(_label(row), []).append(row)
    for k, (name, members) in enumerate(by_method.items()):
        shade = f"C{k}"
        main = sorted((r for r in members if r["lam_multiple"] in (None, 1.0) and r["score"] is not None),
                      key=lambda r: r["value"])
        x = [r["value"] for r in main]
        ax.plot(x, [r["score"] for r in main], "-o", ms=3, color=shade, label=name)
        test_ax.plot(x, [r["test_acc"] for r in main], ":", color=shade)
        for r in members:
            if r["lam_multiple"] not in (None, 1.0) and r["score"] is not None:
                ax.plot(r["value"], r["score"], "x", color=shade, ms=6)
        stopped = [r["value"] for r in members if r["score"] is None]
        if stopped:
            ax.plot(stopped, [0.0] * len(stopped), "v", color=shade, ms=5, clip_on=False,
                    transform=ax.get_xaxis_transform())
        for choice in choices:
            chosen = [r for r in members if _label(choice) == name and r["value"] == choice["value"]
                      and r["lam_multiple"] == choice["lam_multiple"]]
            if chosen:
                ax.plot(choice["value"], chosen[0]["score"], "o", ms=9, mfc="none", color=shade)
    ax.set_xscale("log")
    ax.set_xlabel("rho" if tuned == "rho" else "weight decay (SGD)")
    ax.set_ylabel("validation accuracy (%), solid")
    test_ax.set_ylabel("test accuracy (%), dotted", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the generalization figure from its data file; returns the PNG and PDF paths."""
    settings, results = data["settings"], data["results"]
    cells = _cells(data)
    fig, axes = plt.subplots(4, len(cells), figsize=(max(4.6 * len(cells), 9.0), 16.0),
                             squeeze=False,
                             gridspec_kw={"height_ratios": (1.0, 1.0, 1.0, 0.7)})
    for column, (dataset, noise, norm) in enumerate(cells):
        def here(table: str) -> list[dict[str, Any]]:
            return [r for r in results[table] if _cell(r) == (dataset, noise, norm)]

        summary = here("summary")
        seeds = summary[0]["seeds"] if summary else 0
        model = settings["dataset_setup"][dataset]["model"] + (" + BatchNorm" if norm == "bn" else "")
        axes[0, column].set_title(f"{dataset} ({model}), {noise:.0%} label noise\n"
                                  f"test accuracy, mean +- std over {seeds} seeds", fontsize=9)
        _accuracy_panel(axes[0, column], summary, settings["batch_size"])
        _difference_panel(axes[1, column], here("paired"))
        axes[1, column].set_title("paired by seed (same init, batch order, split, noise draw)",
                                  fontsize=9)
        validation = "noisy" if noise > 0 and settings["validation"] == "noisy" else "clean"
        for row, tuned in ((2, "rho"), (3, "weight_decay")):
            _tuning_panel(axes[row, column], here("tuning"), here("choices"), tuned)
            axes[row, column].set_title(f"tuning curves, mean over {len(settings['tune_seeds'])} "
                                        f"tuning seeds ({validation} validation labels)", fontsize=9)
    fig.suptitle(f"Generalization, every method tuned alike on a validation split, paired by seed\n"
                 f"B={settings['batch_size']}; rho grid {settings['rho_grid'][0]:g}-"
                 f"{settings['rho_grid'][-1]:g} (x2 steps), SGD weight decay "
                 f"{settings['weight_decay_grid'][0]:g}-{settings['weight_decay_grid'][-1]:g}; "
                 f"{'quick settings' if settings.get('quick') else 'default settings'}", fontsize=10)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return save(fig, out_stem, dpi=110)
