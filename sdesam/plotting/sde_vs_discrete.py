"""Figure of ``experiments/sde_vs_discrete.py``: weak error of the first-order SDEs.

Panel 1: weak error of the loss against eta along rho = kappa sqrt(eta), per algorithm, for the
SDE with the tr V term (solid) and without it (dashed), with Monte-Carlo error bars and the
fitted orders in the legend. Panels 2 and 3: the fixed-rho and fixed-eta sweeps of the
ablation run. Panel 4: every test function of the coupled sweep for the ablation run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _key(row: dict[str, Any]) -> str:
    micro = row["micro"] if row["micro"] is not None else row["batch"]
    return f"{row['algorithm']}[m={micro}]"


def _errorbars(ax: Any, rows: list[dict[str, Any]], x: str, label: str, colour: str) -> None:
    """Plot with- and without-tr V errors of ``rows`` against the field ``x``."""
    rows = sorted(rows, key=lambda r: r[x])
    xs = [r[x] for r in rows]
    ax.errorbar(xs, [r["weak_error"] for r in rows], yerr=[r["stderr"] for r in rows],
                color=colour, marker="o", label=f"{label}, with tr V term", capsize=2)
    ax.errorbar(xs, [r["weak_error_without_variance_term"] for r in rows],
                yerr=[r["stderr_without_variance_term"] for r in rows], color=colour,
                marker="s", linestyle="--", label=f"{label}, without", capsize=2)


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the SDE-versus-discrete figure from its data file; returns the PNG and PDF paths."""
    settings, results, orders = data["settings"], data["results"], data["orders"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    coupled = [r for r in results if r["sweep"] == "coupled"]
    for i, key in enumerate(dict.fromkeys(_key(r) for r in coupled)):
        rows = [r for r in coupled if _key(r) == key and r["test_fn"] == "loss"]
        details = orders.get(key + " details", {})
        with_order = details.get("with_variance_term", {}).get("order", float("nan"))
        without_order = details.get("without_variance_term", {}).get("order", float("nan"))
        _errorbars(axes[0], rows, "eta", f"{key} (orders {with_order:.2f} / {without_order:.2f})",
                   colours[i % len(colours)])
    axes[0].set_title(f"loss, rho = {settings['kappa']} sqrt(eta)")
    axes[0].set_xlabel("eta")
    algorithm, micro = settings["ablation_run"]
    ablation = f"{algorithm}[m={micro}]"
    for ax, sweep, x, title in ((axes[1], "fixed_rho", "eta", f"{ablation}, rho = {settings['fixed_rho']}"),
                                (axes[2], "fixed_eta", "rho", f"{ablation}, eta = {settings['fixed_eta']}")):
        rows = [r for r in results if r["sweep"] == sweep and r["test_fn"] == "loss"]
        _errorbars(ax, rows, x, "loss", colours[0])
        ax.set_title(title)
        ax.set_xlabel(x)
    for i, test_fn in enumerate(settings["test_fns"]):
        rows = [r for r in coupled if _key(r) == ablation and r["test_fn"] == test_fn]
        _errorbars(axes[3], rows, "eta", test_fn, colours[i % len(colours)])
    axes[3].set_title(f"{ablation}, all test functions")
    axes[3].set_xlabel("eta")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("weak error max_k |E g(x_k) - E g(X_k eta)|")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"first-order SDE vs discrete: logistic regression, N={settings['n']}, "
                 f"B={settings['batch']}, T={settings['horizon']}, {settings['chains']} chains")
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths
