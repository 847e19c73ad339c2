"""Figure of ``experiments/escape_speed.py``: escape from a poor minimum against m.

Landscape row: the loss, tr V and m-USAM's effective potential for each m; the fraction of
chains escaped against steps (discrete solid with 95% Wilson bands, SDE dashed); the restricted
mean first-exit time against m. Network row: test accuracy from the poor minimum (mean and one
standard error over seeds), the fraction of seeds escaped, and the mean first-exit step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FAMILY_COLOURS = {"usam": "viridis", "sam": "cool"}
FIXED_COLOURS = {"sgd": "black", "rw-sam": "tab:red"}


def colour(algorithm: str, micro: int, batch: int) -> Any:
    """One colour per (algorithm, m): a colormap over m for each family, fixed for SGD/RW-SAM."""
    if algorithm in FIXED_COLOURS:
        return FIXED_COLOURS[algorithm]
    family = "usam" if "usam" in algorithm else "sam"
    position = np.log2(micro) / max(np.log2(batch), 1)
    return plt.get_cmap(FAMILY_COLOURS[family])(0.85 * position)


def label(entry: dict[str, Any], batch: int) -> str:
    """Legend text such as ``m-SAM m=4`` or ``SAM (m=B=16)``."""
    name = entry["algorithm"].upper().replace("M-", "m-").replace("RW-", "RW-")
    if entry["algorithm"] in ("sam", "usam"):
        return f"{name} (m=B={batch})"
    if entry["algorithm"].startswith("m-"):
        return f"{name} m={entry['micro']}"
    return name


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the escape-speed figure from its data file; returns the PNG and PDF paths."""
    settings = data["settings"]
    rows = [p for p in ("landscape", "network") if any(c["protocol"] == p for c in data["curves"])]
    fig, axes = plt.subplots(len(rows), 3, figsize=(16, 4.6 * len(rows)), squeeze=False)
    for row, protocol in zip(axes, rows):
        if protocol == "landscape":
            _landscape_row(row, data, settings["landscape"])
        else:
            _network_row(row, data, settings["network"])
    fig.suptitle("Escape from a poor, sharp minimum (this project's protocols; "
                 f"{'quick settings' if settings.get('quick') else 'default settings'})")
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


def _landscape_row(row, data: dict[str, Any], settings: dict[str, Any]) -> None:
    """Landscape and potentials; escape fraction against steps; exit time against m."""
    picture, batch = data["landscape"], settings["batch"]
    ax = row[0]
    x = np.asarray(picture["x"])
    ax.plot(x, picture["loss"], color="black", lw=2, label="f (SGD)")
    for m, values in picture["potential"].items():
        ax.plot(x, values, color=colour("m-usam", int(m), batch), lw=1,
                label=f"m={m}: barrier {picture['barrier'][m]:.3f}")
    ax.axvline(picture["saddle"], color="grey", ls=":", lw=1)
    ax.set_ylim(min(picture["loss"]) - 0.1, max(picture["loss"][len(x) // 8:]) + 0.4)
    ax.set_xlabel("x")
    ax.set_ylabel("f  /  f + rho/2 |f'|^2 + rho c(m)/2 tr V")
    ax.set_title(f"landscape and m-USAM potentials (rho={settings['rho']})\n"
                 f"poor well barrier (SGD) {picture['barrier']['sgd']:.3f}")
    twin = ax.twinx()
    twin.plot(x, picture["trace_V"], color="tab:orange", ls="--", lw=1)
    twin.set_ylabel("tr V (dashed orange)", color="tab:orange")
    ax.legend(fontsize=7, loc="lower left")

    ax = row[1]
    for curve in (c for c in data["curves"] if c["protocol"] == "landscape"):
        style = "-" if curve["kind"] == "discrete" else "--"
        shade = colour(curve["algorithm"], curve["micro"], batch)
        ax.plot(curve["step"], curve["escaped_fraction"], style, color=shade, lw=1.3,
                label=f"{label(curve, batch)}{' SDE' if curve['kind'] == 'sde' else ''}")
        if curve["kind"] == "discrete":
            ax.fill_between(curve["step"], curve["ci_low"], curve["ci_high"], color=shade, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of chains escaped")
    ax.set_title(f"eta={settings['eta']}, B={batch}; solid: discrete ({settings['chains']} chains, "
                 f"95% Wilson band);\ndashed: SDE ({settings['sde_chains']} chains)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)

    _exit_time_panel(row[2], [e for e in data["exit_time"] if e["protocol"] == "landscape"],
                     batch, settings["steps"])


def _exit_time_panel(ax, exits: list[dict[str, Any]], batch: int, horizon: int) -> None:
    """Restricted mean first-exit time against m, one line per family, SGD/RW-SAM as lines."""
    families = {}
    for entry in exits:
        if entry["algorithm"] in FIXED_COLOURS:
            shade = FIXED_COLOURS[entry["algorithm"]]
            style = "-" if entry["kind"] == "discrete" else "--"
            ax.axhline(entry["mean"], color=shade, ls=style, lw=1,
                       label=f"{entry['algorithm'].upper()} {entry['kind']} "
                             f"({entry['escaped']}/{entry['chains']} escaped)")
            ax.axhspan(entry["ci_low"], entry["ci_high"], color=shade, alpha=0.08)
            continue
        family = ("m-USAM" if "usam" in entry["algorithm"] else "m-SAM") + f" {entry['kind']}"
        families.setdefault(family, []).append(entry)
    for family, entries in families.items():
        entries.sort(key=lambda e: e["micro"])
        m = np.array([e["micro"] for e in entries])
        mean = np.array([e["mean"] for e in entries])
        err = np.array([[e["mean"] - e["ci_low"] for e in entries],
                        [e["ci_high"] - e["mean"] for e in entries]])
        shade = colour("m-usam" if "USAM" in family else "m-sam", max(1, batch // 4), batch)
        ax.errorbar(m, mean, yerr=err, marker="o", capsize=3, color=shade,
                    ls="--" if "sde" in family else "-", label=family)
        for e in entries:
            ax.annotate(f"{e['escaped']}", (e["micro"], e["mean"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro-batch size m")
    ax.set_ylabel(f"mean of min(first exit, {horizon}) [steps]")
    ax.set_title("restricted mean first-exit time (95% bootstrap);\nnumbers: chains/seeds escaped",
                 fontsize=9)
    ax.legend(fontsize=6)


def _network_row(row, data: dict[str, Any], settings: dict[str, Any]) -> None:
    """Test accuracy, escaped fraction and exit time of the digits protocol."""
    batch = settings["batch"]
    ax = row[0]
    for entry in data.get("network_metrics", []):
        shade = colour(entry["algorithm"], entry["micro"], batch)
        mean = np.asarray(entry["test_accuracy"])
        se = np.asarray(entry["test_accuracy_stderr"])
        ax.plot(entry["step"], mean, color=shade, label=label(entry, batch))
        ax.fill_between(entry["step"], mean - se, mean + se, color=shade, alpha=0.2)
    start = settings["poor_minimum"]["test_accuracy"]
    ax.axhline(start + settings["threshold"], color="grey", ls=":",
               label=f"escape threshold (+{settings['threshold']:.0%})")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits MLP from the poor minimum (test acc {start:.3f}); "
                 f"{settings['seeds']} seeds, mean +- 1 s.e.", fontsize=9)
    ax.legend(fontsize=7)

    ax = row[1]
    for curve in (c for c in data["curves"] if c["protocol"] == "network"):
        shade = colour(curve["algorithm"], curve["micro"], batch)
        ax.step(curve["step"], curve["escaped_fraction"], where="post", color=shade,
                label=label(curve, batch))
        ax.fill_between(curve["step"], curve["ci_low"], curve["ci_high"], step="post",
                        color=shade, alpha=0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of seeds escaped")
    ax.set_title(f"lr={settings['lr']}, B={batch}, rho={settings['rho']} "
                 "(95% Wilson band over seeds)", fontsize=9)
    ax.legend(fontsize=7)

    _exit_time_panel(row[2], [e for e in data["exit_time"] if e["protocol"] == "network"],
                     batch, settings["steps"])
