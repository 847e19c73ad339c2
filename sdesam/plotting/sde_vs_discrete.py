"""Figure of ``experiments/sde_vs_discrete.py``: weak error of the first-order SDEs.

Reads only the record schema (``results["weak_errors"]``, ``results["orders"]``,
``results["expansions"]``). Top row, along rho = kappa sqrt(eta): (a) SGD and the USAM rules and
(b) the SAM rules and RW-SAM -- the weak error of the loss (max over steps) of the full SDE
(solid) and of the SDE without its noise-induced term (dashed), with Monte-Carlo error bars and
the fitted order with its 95% interval in the legend; (c) the same error at the horizon T, full
SDE; grey reference slopes 1 and 1/2. Middle row, for the ablation run: (d) eta at fixed rho,
(e) rho at fixed eta, (f) every test function. Bottom row: (g) a forest plot of the orders at T
(the slope over every eta and the local order between the two smallest) with their 95%
Monte-Carlo intervals, and (h) the sqrt(eta) coefficient a of the signed error at T with its
95% interval, full SDE against the SDE without its noise-induced term, and the a predicted
without the term (black crosses). The footnote says how
many chains every point is over, whether control variates were used and how many diverged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .style import save  # noqa: E402

from ..algorithms import get_rule  # noqa: E402


def run_label(row: dict[str, Any]) -> str:
    """A run's display name: the rule's label with its micro-batch size or temperature."""
    label = get_rule(row["rule"]).label
    if row["micro"] is not None:
        label += f" m={row['micro']}"
    if row["lam"] is not None:
        label += f" lam={row['lam']:g}"
    return label


def _run_key(row: dict[str, Any]) -> tuple:
    return row["rule"], row["micro"], row["lam"]


def _order_text(orders: list[dict[str, Any]], row: dict[str, Any], variant: str, measure: str) -> str:
    for fit in orders:
        if _run_key(fit) == _run_key(row) and fit["variant"] == variant and fit["measure"] == measure:
            return f"{fit['order']:.2f} [{fit['order_ci_low']:.2f}, {fit['order_ci_high']:.2f}]"
    return "n/a"


MARKERS = "osD^vP*X"


def _curve(ax: Any, rows: list[dict[str, Any]], x: str, y: str, label: str, colour: str,
           dashed: bool = False, marker: str = "o") -> None:
    """One error-bar curve; the lower bar is clipped above zero so log axes keep it."""
    rows = sorted(rows, key=lambda r: r[x])
    values = [r[y] for r in rows]
    errors = [r[y + "_stderr"] for r in rows]
    lower = [min(e, 0.9 * v) for v, e in zip(values, errors)]
    ax.errorbar([r[x] for r in rows], values, yerr=[lower, errors], color=colour, marker=marker,
                linestyle="--" if dashed else "-", alpha=0.6 if dashed else 1.0, label=label,
                capsize=2, markersize=4, fillstyle="none" if dashed else "full")


def _family_panel(ax: Any, coupled: list[dict[str, Any]], orders: list[dict[str, Any]],
                  runs: list[tuple], colours: list[str], title: str) -> None:
    for i, key in enumerate(runs):
        rows = [r for r in coupled if _run_key(r) == key]
        for variant, dashed in (("full", False), ("without_noise_term", True)):
            chosen = [r for r in rows if r["variant"] == variant]
            if not chosen:
                continue
            name = run_label(chosen[0]) if not dashed else "  without noise term"
            _curve(ax, chosen, "eta", "weak_error",
                   f"{name}: order {_order_text(orders, chosen[0], variant, 'max_over_steps')}",
                   colours[i % len(colours)], dashed, MARKERS[i % len(MARKERS)])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("eta")


def _reference_slopes(ax: Any, rows: list[dict[str, Any]], y: str) -> None:
    """Grey slopes 1 (dotted) and 1/2 (dash-dot) through the median error at the smallest eta."""
    etas = sorted({r["eta"] for r in rows})
    if len(etas) < 2:
        return
    anchor = sorted(r[y] for r in rows if r["eta"] == etas[0])
    level = anchor[len(anchor) // 2]
    for power, style in ((1.0, ":"), (0.5, "-.")):
        ax.plot(etas, [level * (e / etas[0]) ** power for e in etas], color="grey",
                linestyle=style, linewidth=1, label=f"slope {power:g}", zorder=0)


VARIANT_STYLE = {"full": (-0.12, "full", "tab:blue"), "without_noise_term": (0.12, "none", "tab:red")}
"""Row offset, marker fill and colour of each SDE variant in the per-run panels (g) and (h)."""


def _per_run(ax: Any, runs: list[tuple], fits: list[dict[str, Any]],
             points: list[tuple[str, float, str]], references: tuple[float, ...]) -> None:
    """One row per run: for each variant's fit (full filled, without the term hollow) and each
    ``(field, row offset, marker)`` of ``points``, the value with its ``_ci_low``/``_ci_high``
    interval; grey vertical lines at ``references``."""
    for i, key in enumerate(runs):
        for variant, (shift, fill, colour) in VARIANT_STYLE.items():
            fit = next((f for f in fits if _run_key(f) == key and f["variant"] == variant), None)
            if fit is None:
                continue
            for field, dy, marker in points:
                ax.errorbar(fit[field], i + shift + dy,
                            xerr=[[fit[field] - fit[field + "_ci_low"]],
                                  [fit[field + "_ci_high"] - fit[field]]],
                            fmt=marker, color=colour, fillstyle=fill, markersize=5, capsize=2)
    for value in references:
        ax.axvline(value, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(runs)), [run_label({"rule": k[0], "micro": k[1], "lam": k[2]})
                                     for k in runs])
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)


def _forest(ax: Any, orders: list[dict[str, Any]], runs: list[tuple]) -> None:
    """Orders at T per run: slope over every eta (circles) and local order between the two
    smallest etas (squares), full SDE filled, without the noise term hollow, 95% intervals."""
    _per_run(ax, runs, [o for o in orders if o["measure"] == "at_horizon"],
             [("order", -0.05, "o"), ("local_order", 0.05, "s")], (0.5, 1.0))
    handles = [plt.Line2D([], [], color="tab:blue", marker="o", linestyle="", label="full SDE, slope over all eta"),
               plt.Line2D([], [], color="tab:blue", marker="s", linestyle="", label="full SDE, local order (two smallest eta)"),
               plt.Line2D([], [], color="tab:red", marker="o", fillstyle="none", linestyle="",
                          label="without noise term, slope"),
               plt.Line2D([], [], color="tab:red", marker="s", fillstyle="none", linestyle="",
                          label="without noise term, local order")]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xlabel("order in eta of the weak error at T (95% Monte-Carlo interval)")
    ax.set_title("(g) orders at T: expected 1 with the noise-induced term, 1/2 without", fontsize=10)


def _coefficients(ax: Any, expansions: list[dict[str, Any]], runs: list[tuple]) -> None:
    """The sqrt(eta) coefficient a of the signed error at T per run, with its 95% interval,
    and (black crosses, where the data file has it) the a that dropping the term must leave."""
    _per_run(ax, runs, expansions, [("a", 0.0, "o")], (0.0,))
    shift = VARIANT_STYLE["without_noise_term"][0]
    predicted = [(i + shift, fit["predicted_a"]) for i, key in enumerate(runs) for fit in expansions
                 if _run_key(fit) == key and fit["variant"] == "without_noise_term"
                 and "predicted_a" in fit]
    if predicted:
        ax.plot([a for _, a in predicted], [y for y, _ in predicted], "x", color="black",
                markersize=7, label="predicted without the term (linear response)")
        ax.legend(fontsize=7, loc="upper right")   # the top rows, the USAM rules, have a <= 0
    ax.set_xlabel("a in e(eta) = a sqrt(eta) + b eta + c eta^1.5 (weighted fit, 95% interval)")
    ax.set_title("(h) sqrt(eta) coefficient: full (filled) vs without term (hollow)", fontsize=10)


def draw(data: dict[str, Any], out_stem: Path) -> list[Path]:
    """Draw the SDE-versus-discrete figure from its data file; returns the PNG and PDF paths."""
    settings, results = data["settings"], data["results"]
    rows, orders, expansions = results["weak_errors"], results["orders"], results["expansions"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order_fn = settings["order_test_fn"]
    coupled = [r for r in rows if r["sweep"] == "coupled" and r["test_fn"] == order_fn]
    runs = list(dict.fromkeys(_run_key(r) for r in coupled))
    usam = [k for k in runs if not get_rule(k[0]).normalized]
    sam = [k for k in runs if get_rule(k[0]).normalized]
    fig, named = plt.subplot_mosaic([["a", "b", "c"], ["d", "e", "f"], ["g", "g", "h"]],
                                    figsize=(18, 18),
                                    gridspec_kw={"height_ratios": (1.35, 1, 1.1)})
    kappa = settings["kappa"]
    _family_panel(named["a"], coupled, orders, usam, colours,
                  f"(a) unnormalised rules: {order_fn}, rho = {kappa} sqrt(eta)")
    _family_panel(named["b"], coupled, orders, sam, colours[len(usam):] + colours[:len(usam)],
                  f"(b) normalised rules: {order_fn}, rho = {kappa} sqrt(eta)")
    for i, key in enumerate(runs):
        chosen = [r for r in coupled if _run_key(r) == key and r["variant"] == "full"]
        _curve(named["c"], chosen, "eta", "weak_error_T",
               f"{run_label(chosen[0])}: order {_order_text(orders, chosen[0], 'full', 'at_horizon')}",
               colours[i % len(colours)], marker=MARKERS[i % len(MARKERS)])
    named["c"].set_title(f"(c) full SDE, {order_fn} at the horizon T = {settings['horizon']}",
                         fontsize=10)
    named["c"].set_xlabel("eta")
    for key, field in (("a", "weak_error"), ("b", "weak_error"), ("c", "weak_error_T")):
        _reference_slopes(named[key], coupled, field)
    ablation = {"rule": settings["ablation_run"][0], "micro": settings["ablation_run"][1],
                "lam": settings["ablation_run"][2]}
    name = run_label(ablation)
    for ax, sweep, x, title in ((named["d"], "fixed_rho", "eta", f"(d) {name}, rho = {settings['fixed_rho']}"),
                                (named["e"], "fixed_eta", "rho", f"(e) {name}, eta = {settings['fixed_eta']}")):
        chosen = [r for r in rows if r["sweep"] == sweep and r["test_fn"] == order_fn]
        for variant, dashed in (("full", False), ("without_noise_term", True)):
            _curve(ax, [r for r in chosen if r["variant"] == variant], x, "weak_error",
                   f"{order_fn}, {'full SDE' if not dashed else 'without noise term'}", colours[0], dashed)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x)
    for i, test_fn in enumerate(settings["test_fns"]):
        chosen = [r for r in rows if r["sweep"] == "coupled" and _run_key(r) == _run_key(ablation)
                  and r["test_fn"] == test_fn and r["variant"] == "full"]
        _curve(named["f"], chosen, "eta", "weak_error", test_fn, colours[i % len(colours)])
    named["f"].set_title(f"(f) {name}, full SDE, every test function", fontsize=10)
    named["f"].set_xlabel("eta")
    for key in "abcdef":
        ax = named[key]
        ticks = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_ylabel("weak error")
        ax.grid(True, which="both", alpha=0.3)
    for key in "abc":   # many runs: legends below the panels, clear of the data
        named[key].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    for key in "def":
        named[key].legend(fontsize=7, loc="lower right")
    _forest(named["g"], orders, runs)
    _coefficients(named["h"], expansions, runs)
    diverged = sum(r["diverged"] for r in rows)
    fig.suptitle(f"first-order SDE vs discrete rule: logistic regression, N = {settings['n']}, "
                 f"d = {settings['dim']}, B = {settings['batch']}, T = {settings['horizon']}, "
                 f"dt = eta/{settings['substeps']}", fontsize=12)
    method = ("control variates (an SGD companion on the losses' quadratic expansion, exact moments)"
              if settings.get("control_variates") else "plain Monte Carlo")
    fig.text(0.5, 0.005, "weak error = max over steps k <= T/eta of |E g(x_k) - E g(X_(k eta))| "
             "(c: at k = T/eta); error bars: 1 Monte-Carlo standard error; orders: least-squares "
             f"slope in eta with 95% Monte-Carlo interval; every point over {settings['chains']} "
             f"chains per side, {method}; {diverged} diverged chains in all", ha="center",
             fontsize=9, wrap=True)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    return save(fig, out_stem, dpi=100)
