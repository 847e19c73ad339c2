"""Figure of ``experiments/escape_speed.py``: escape from a poor minimum against m.

Landscape row: the loss, tr V and each rule's effective potential; the fraction of chains
escaped against steps (discrete solid with 95% Wilson bands, SDE dashed); the restricted mean
first-exit time against m (with the chains that left the poor well to the left); the
per-chain paired differences of the exit time against SGD and SAM. Network row: test accuracy
from the poor minimum (mean and one standard error over seeds), the fraction of seeds
escaped, the mean first-exit step and its per-seed paired differences against SGD and SAM.
Reads only the record schema (:mod:`sdesam.experiment.records`); a rule's place and colour come from the
rule registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..algorithms import get_rule  # noqa: E402
from .style import (colour, family_colour, label, m_curve_label, micro_position,  # noqa: E402
                    on_micro_axis, paired_panel, save, settings_note)


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the escape-speed figure from its record; returns the PNG and PDF paths."""
    settings, results = data["settings"], data["results"]
    rows = [p for p in ("landscape", "network") if any(c["protocol"] == p for c in results["curves"])]
    fig, axes = plt.subplots(len(rows), 4, figsize=(21, 4.9 * len(rows)), squeeze=False)
    for row, protocol in zip(axes, rows):
        if protocol == "landscape":
            _landscape_row(row, results, settings["landscape"])
        else:
            _network_row(row, results, settings["network"])
    fig.suptitle(f"Escape from a poor, sharp minimum (this project's protocols; {settings_note(settings)})")
    fig.tight_layout()
    return save(fig, out_stem)


def _landscape_row(row, results: dict[str, Any], settings: dict[str, Any]) -> None:
    """Landscape and potentials; escape fraction against steps; exit time against m."""
    picture, batch = results["landscape"][0], settings["batch"]
    parameters = results["landscape_parameters"][0]
    ax = row[0]
    x = np.asarray(picture["x"])
    ax.plot(x, picture["loss"], color="black", lw=2, label="f")
    sgd_barrier = None
    for entry in results["potentials"]:
        if not get_rule(entry["rule"]).perturbed:
            sgd_barrier = entry["barrier"]
            continue
        ax.plot(x, entry["potential"], color=colour(entry, batch), lw=1,
                label=f"{label(entry, batch)}: barrier {entry['barrier']:.3f}")
    ax.axvline(parameters["saddle"], color="grey", ls=":", lw=1)
    ax.set_ylim(min(picture["loss"]) - 0.1, max(picture["loss"][len(x) // 8:]) + 0.4)
    ax.set_xlabel("x")
    ax.set_ylabel("f  /  f + rho/2 |f'|^2 + rho c(m)/2 tr V")
    ax.set_title(f"landscape and effective potentials (rho={settings['rho']})\n"
                 f"poor-well barrier of f (SGD) {sgd_barrier:.3f}; dotted: saddle", fontsize=9)
    twin = ax.twinx()
    twin.plot(x, picture["trace_V"], color="tab:orange", ls="--", lw=1)
    twin.set_ylabel("tr V (dashed orange)", color="tab:orange")
    ax.legend(fontsize=7, loc="lower left")

    ax = row[1]
    for curve in (c for c in results["curves"] if c["protocol"] == "landscape"):
        style = "-" if curve["kind"] == "discrete" else "--"
        shade = colour(curve, batch)
        ax.plot(curve["step"], curve["escaped_fraction"], style, color=shade, lw=1.3,
                label=f"{label(curve, batch)}{' SDE' if curve['kind'] == 'sde' else ''}")
        if curve["kind"] == "discrete":
            ax.fill_between(curve["step"], curve["ci_low"], curve["ci_high"], color=shade, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of chains escaped")
    dt = settings.get("sde_dt_fraction")
    ax.set_title(f"eta={settings['eta']}, B={batch}; solid: discrete ({settings['chains']} chains, "
                 f"95% Wilson band);\ndashed: SDE ({settings['sde_chains']} chains"
                 + (f", Euler dt = {dt:g} eta)" if dt else ")"), fontsize=9)
    ax.legend(fontsize=6, ncol=2)

    exits = [e for e in results["exit_time"] if e["protocol"] == "landscape"]
    _exit_time_panel(row[2], exits, batch, settings["steps"], "chains")
    left = [f"{label(e, batch)}{' SDE' if e['kind'] == 'sde' else ''}: {e['left_exit']}"
            for e in exits if e.get("left_exit")]
    row[2].set_title(row[2].get_title() + f"\nleft exits (end at x < {parameters['left_edge']:.2f}, "
                     f"counted as not escaped): {', '.join(left) or 'none'}", fontsize=8)
    paired = results.get("landscape_exit_paired", [])
    paired_panel(row[3], [p for p in paired if p["kind"] == "discrete"], batch,
                 "min(first exit, T) [steps]")
    row[3].set_title(f"discrete, paired by chain (same batches for chain k; n={settings['chains']})"
                     "\nrule minus SGD / SAM, mean and 95% t interval", fontsize=9)


def _exit_time_panel(ax, exits: list[dict[str, Any]], batch: int, horizon: int, unit: str) -> None:
    """Restricted mean first-exit time against m, one line per family and kind; rules off the
    m axis (SGD, RW-SAM) as horizontal lines."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ticks: set[int] = set()
    for entry in exits:
        if not on_micro_axis(entry):
            shade = colour(entry, batch)
            style = "-" if entry["kind"] == "discrete" else "--"
            ax.axhline(entry["mean"], color=shade, ls=style, lw=1,
                       label=f"{label(entry, batch)} {entry['kind']} "
                             f"({entry['escaped']}/{entry['chains']} escaped)")
            ax.axhspan(entry["ci_low"], entry["ci_high"], color=shade, alpha=0.08)
            continue
        curves.setdefault((get_rule(entry["rule"]).family, entry["kind"]), []).append(entry)
    for (family, kind), entries in curves.items():
        entries.sort(key=lambda e: micro_position(e, batch))
        m = np.array([micro_position(e, batch) for e in entries])
        mean = np.array([e["mean"] for e in entries])
        err = np.array([[e["mean"] - e["ci_low"] for e in entries],
                        [e["ci_high"] - e["mean"] for e in entries]])
        ax.errorbar(m, mean, yerr=err, marker="o", capsize=3, color=family_colour(entries[0]["rule"]),
                    ls="--" if kind == "sde" else "-", label=f"{m_curve_label(entries)} {kind}")
        for e in entries:       # discrete counts above the point, SDE counts below
            ax.annotate(f"{e['escaped']}", (micro_position(e, batch), e["mean"]), fontsize=6,
                        textcoords="offset points", xytext=(4, 3) if kind == "discrete" else (4, -9))
        ticks.update(m.tolist())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    ax.set_xlabel("micro-batch size m")
    ax.set_ylabel(f"mean of min(first exit, {horizon}) [steps]")
    ax.set_title(f"restricted mean first-exit time (95% bootstrap);\nnumbers: {unit} escaped",
                 fontsize=9)
    ax.legend(fontsize=6)


def _network_row(row, results: dict[str, Any], settings: dict[str, Any]) -> None:
    """Test accuracy, escaped fraction and exit time of the digits protocol."""
    batch = settings["batch"]
    ax = row[0]
    for entry in results.get("network_metrics", []):
        shade = colour(entry, batch)
        mean = np.asarray(entry["test_accuracy"])
        se = np.asarray(entry["test_accuracy_stderr"])
        ax.plot(entry["step"], mean, color=shade, label=label(entry, batch))
        ax.fill_between(entry["step"], mean - se, mean + se, color=shade, alpha=0.2)
    start = results["poor_minimum"][0]["test_accuracy"]
    ax.axhline(start + settings["threshold"], color="grey", ls=":",
               label=f"escape threshold (+{settings['threshold']:.0%})")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits MLP from the poor minimum (test acc {start:.3f}); "
                 f"{settings['seeds']} seeds, mean +- 1 s.e.", fontsize=9)
    ax.legend(fontsize=7)

    ax = row[1]
    for curve in (c for c in results["curves"] if c["protocol"] == "network"):
        shade = colour(curve, batch)
        ax.step(curve["step"], curve["escaped_fraction"], where="post", color=shade,
                label=label(curve, batch))
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of seeds escaped")
    ax.set_title(f"lr={settings['lr']}, B={batch}, rho={settings['rho']}; {settings['seeds']} seeds "
                 "(Wilson bands in the data file;\ntoo wide to draw: the exit-time panel carries "
                 "the uncertainty)", fontsize=9)
    ax.legend(fontsize=7)

    _exit_time_panel(row[2], [e for e in results["exit_time"] if e["protocol"] == "network"],
                     batch, settings["steps"], "seeds")
    paired = results.get("network_exit_paired", [])
    if paired:
        paired_panel(row[3], paired, batch, "first exit step")
    row[3].set_title(f"paired by seed (same start and batch order; n={settings['seeds']})\n"
                     "rule minus SGD / SAM, mean and 95% t interval", fontsize=9)
