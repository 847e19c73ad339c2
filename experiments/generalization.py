"""Generalization on real data a CPU can train: SGD, SAM, m-SAM and RW-SAM, tuned and paired.

For each data set (MNIST-1D with the benchmark's small CNN; scikit-learn's 8x8 digits with the
MLP) and label-noise level (symmetric, training split only), every method is run through the
trainer (``sdesam.train``) under one protocol:

1. tuning on the validation split (``val_fraction`` of the training data, stratified; the test
   set is never looked at): rho from ``rho_grid`` per method and per m (one tuning seed,
   distinct from the evaluation seeds). A candidate whose validation accuracy falls more than
   ``prune_margin`` points below the best finished candidate's at 1/3 or 2/3 of training is
   stopped there (early stopping of bad candidates, not fewer seeds). RW-SAM: rho is tuned at
   ``lam = 1/mean|grad f_i|``, then lam over ``lam_multiples`` (multiples of 1/mean per-sample
   gradient norm) at that rho; the norm is recalibrated on each run, at its initial weights;
2. evaluation: ``seeds`` seeds at the chosen settings, the same seeds for every method (same
   initialisation, same batch order), so differences are paired per seed. Each run reports
   its final test accuracy, tr V (exact per-sample gradients) and the top Hessian eigenvalue
   of the training loss (Lanczos), both on the first ``statistics_samples`` training samples;
3. statistics: mean +- std per method, paired differences against SGD and SAM with 95%
   t-intervals, and the minimal detectable difference of the design (80% power, alpha 0.05,
   from the observed spread of the paired differences).

Every run lives in its own trainer folder under ``--runs-dir`` with a ``summary.json``; a
re-started experiment skips finished runs and continues interrupted ones exactly (--resume).
The runs are tasks, run in parallel (``--jobs``, ``--scheduler``) in two batches: every
method's tuning chain (its candidates one after another, as pruning needs) with SGD's seed
runs, then, cell by cell, the other methods' seed runs at their chosen settings. Each task
writes ``RUNS_DIR/tasks/<key>.json`` and is skipped when it exists. The trainer's seed is the
run's own setting (``tune_seed`` or the evaluation seed, the same for every method: paired),
so the run folders keep their names and finished runs are reused.
Writes ``OUT/generalization.json`` and the figure after every finished cell (data set x noise
level; ``metadata.complete`` says whether all cells are in), so a long run shows its results
as they come.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdesam import per_sample, sgn, stats
from sdesam.algorithms import get_rule
from sdesam.cli import guarded
from sdesam.experiment.arguments import bare_parser, prepare_out
from sdesam.experiment.executor import (RunBatch, add_executor_arguments, check_executor_arguments,
                                        sweep_runner)
from sdesam.experiment.headline import estimate, print_headline, rule_name
from sdesam.experiment.outputs import check_writable
from sdesam.plotting import publish
from sdesam.experiment.records import atomic_write, make_record, read_record, run_metadata, write_json
from sdesam.experiment.tasks import Task, exits_on_task_failure
from sdesam.train import augment
from sdesam.train.loop import (TrainConfig, initial_model, per_sample_cross_entropy,
                               prepare_data, train)
from sdesam.validation import InputError

DATASETS: dict[str, dict[str, Any]] = {
    "mnist1d": {"model": "cnn1d", "lr": 0.1, "epochs": 10},
    "digits": {"model": "mlp1d", "lr": 0.05, "epochs": 20},
}
SETTINGS: dict[str, Any] = {
    "datasets": ["digits", "mnist1d"], "label_noise": [0.0, 0.4], "batch_size": 32,
    "micros": [1, 4], "rho_grid": [0.01, 0.03, 0.1, 0.3], "lam_multiples": [0.5, 1.0, 2.0],
    "seeds": 8, "tune_seed": 1000, "val_fraction": 0.2, "momentum": 0.9, "weight_decay": 5e-4,
    "prune_margin": 3.0, "statistics_samples": 1024, "lanczos_iterations": 10,
    "dataset_setup": DATASETS,
}
QUICK: dict[str, Any] = {
    "datasets": ["digits"], "micros": [1], "rho_grid": [0.03, 0.1], "lam_multiples": [1.0],
    "seeds": 3, "lanczos_iterations": 5, "statistics_samples": 256,
    "dataset_setup": {"digits": {**DATASETS["digits"], "epochs": 4}},
}
REFERENCES = ("sgd", "sam")
PAPER = {  # test accuracy (%) SGD / SAM / RW-SAM, /work/shared/paper.md: Table 1 and Table 4
    0.0: ("Table 1, ResNet-18 on CIFAR-10", (95.62, 95.99, 96.24)),
    0.2: ("Table 4, 20% label noise", (87.54, 90.01, 90.34)),
    0.4: ("Table 4, 40% label noise", (83.66, 86.40, 86.87)),
    0.6: ("Table 4, 60% label noise", (76.64, 78.79, 81.52)),
    0.8: ("Table 4, 80% label noise", (46.53, 37.69, 53.17)),
}


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a rule, with its micro-batch size for the m-rules."""

    algorithm: str
    micro: int | None = None

    @property
    def label(self) -> str:
        """A short name: sgd, sam, rw-sam, m-sam(m=4)."""
        return self.algorithm if self.micro is None else f"{self.algorithm}(m={self.micro})"


@dataclass(frozen=True)
class Cell:
    """One data set at one label-noise level."""

    dataset: str
    label_noise: float


class _Pruned(Exception):
    """Raised from the trainer's epoch callback to stop a tuning candidate early."""


def methods(settings: dict[str, Any]) -> list[Method]:
    """SGD, SAM (m = B), m-SAM for each m of ``micros`` (m < B) and RW-SAM."""
    return [Method("sgd"), Method("sam"), *[Method("m-sam", m) for m in settings["micros"]],
            Method("rw-sam")]


class Runner:
    """Runs (or reads back) one trainer run per (cell, method, rho, lam multiple, seed)."""

    def __init__(self, settings: dict[str, Any], runs_dir: Path, device: str, progress: bool):
        self.settings, self.runs_dir, self.device, self.progress = settings, runs_dir, device, progress

    def config(self, cell: Cell, method: Method, rho: float | None, seed: int, final: bool,
               lam: float = 1.0) -> TrainConfig:
        """The trainer settings of one run (tr V measured at the end of evaluation runs); ``lam``
        reaches the trainer only for rules that take it (it stays in the run's name, as ever)."""
        setup, s = self.settings["dataset_setup"][cell.dataset], self.settings
        name = (f"{cell.dataset}-noise{cell.label_noise:g}/{method.label}-rho{rho}-"
                f"lam{lam:.6g}-seed{seed}")
        return TrainConfig(out=str(self.runs_dir / name), dataset=cell.dataset, model=setup["model"],
                           val_fraction=s["val_fraction"], label_noise=cell.label_noise,
                           optimizer=method.algorithm, rho=rho, micro=method.micro,
                           lam=lam if "lam" in get_rule(method.algorithm).keywords else None,
                           lr=setup["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"],
                           epochs=setup["epochs"], batch_size=s["batch_size"], seed=seed,
                           trace_every=setup["epochs"] if final else 0,
                           probe_size=s["statistics_samples"],
                           device=self.device, resume=True, progress=False)

    def calibrate_lam(self, config: TrainConfig, multiple: float) -> tuple[float, float]:
        """(lam, mean per-sample gradient norm): lam = multiple / mean |grad f_i| at the run's
        initial weights on its training split."""
        data = prepare_data(config, torch.device(self.device))
        model = initial_model(config, data, torch.device(self.device))
        inputs = augment.normalize(data.train_images, data.mean, data.std)
        norms = per_sample.per_sample_grad_norms(model, per_sample_cross_entropy, inputs,
                                                 data.train_labels, chunk_size=256)
        mean_norm = float(norms.mean())
        return multiple / mean_norm, mean_norm

    def run(self, cell: Cell, method: Method, rho: float | None, seed: int, *, final: bool,
            lam_multiple: float | None = None,
            bar: list[float] | None = None) -> dict[str, Any]:
        """One run's summary (read back when it exists): accuracies, val curve, pruned epoch,
        and for evaluation runs tr V and the top Hessian eigenvalue. ``bar``: the best finished
        candidate's validation curve, against which this one is pruned."""
        config = self.config(cell, method, rho, seed, final)
        mean_norm = None
        if lam_multiple is not None:
            lam, mean_norm = self.calibrate_lam(config, lam_multiple)
            config = self.config(cell, method, rho, seed, final, lam)
        path = Path(config.out) / "summary.json"
        if path.is_file():
            return read_record(path)["results"]["run"][0]
        began = time.perf_counter()
        pruned_at = None
        try:
            result = train(config, on_epoch_end=self._pruner(config.epochs, bar))
            model, metrics = result.model, result.metrics
        except _Pruned as stop:
            pruned_at = int(str(stop))
            model, metrics = None, None
        if metrics is None:
            metrics = [json.loads(line) for line in
                       (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
        last = metrics[-1]
        summary: dict[str, Any] = {
            "dataset": cell.dataset, "label_noise": cell.label_noise,
            "rule": method.algorithm, "micro": method.micro, "rho": rho, "seed": seed,
            "lam_multiple": lam_multiple, "lam": config.lam if lam_multiple is not None else None,
            "mean_grad_norm": mean_norm, "epochs": len(metrics), "pruned_at_epoch": pruned_at,
            "val_acc": last["val_acc"], "test_acc": last["test_acc"], "train_acc": last["train_acc"],
            "val_curve": [m["val_acc"] for m in metrics],
            "train_seconds": sum(m["epoch_time_s"] for m in metrics),
        }
        if final:
            summary["trace_V"] = last["trace_V"]
            summary["hessian_top"] = self.hessian_top(config, model, seed)
        summary["wall_seconds"] = time.perf_counter() - began
        write_json(path, make_record({"experiment": "generalization_run"}, {"run": [summary]}, {}))
        return summary

    def _pruner(self, epochs: int, bar: list[float] | None) -> Callable[[dict[str, Any]], None]:
        """The epoch callback stopping a candidate that trails ``bar`` by the prune margin at
        1/3 or 2/3 of training."""
        checks = {max(1, epochs // 3), max(1, 2 * epochs // 3)} - {epochs}
        margin = self.settings["prune_margin"]

        def check(record: dict[str, Any]) -> None:
            epoch = record["epoch"]
            if bar is not None and epoch in checks and record["val_acc"] < bar[epoch - 1] - margin:
                raise _Pruned(str(epoch))
        return check

    def hessian_top(self, config: TrainConfig, model: torch.nn.Module, seed: int) -> float:
        """The top Hessian eigenvalue of the training loss at the end of the run, on the first
        ``statistics_samples`` training samples (noisy labels: the objective being minimised;
        the same samples tr V is measured on)."""
        data = prepare_data(config, torch.device(self.device))
        count = min(self.settings["statistics_samples"], len(data.train_labels))
        inputs = augment.normalize(data.train_images[:count], data.mean, data.std)
        return float(sgn.hessian_top_eigenvalues(
            model, per_sample_cross_entropy, inputs, data.train_labels[:count], 1,
            iterations=self.settings["lanczos_iterations"], seed=seed)[0])


def tune(runner: Runner, cell: Cell, method: Method) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the chosen setting, every candidate's summary) for ``method`` on ``cell``: rho from the
    grid (best final validation accuracy; the first in grid order on ties), then for RW-SAM
    the lam multiple at that rho. SGD has nothing to tune."""
    settings, seed = runner.settings, runner.settings["tune_seed"]
    rule = get_rule(method.algorithm)
    if not rule.perturbed:
        return {"rho": None, "lam_multiple": None}, []
    reweighted = rule.weighted
    tried: list[dict[str, Any]] = []

    def best_of(candidates: list[tuple[float, float | None]]) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        for rho, multiple in candidates:
            summary = runner.run(cell, method, rho, seed, final=False, lam_multiple=multiple,
                                 bar=best["val_curve"] if best else None)
            tried.append(summary)
            if summary["pruned_at_epoch"] is None and (best is None or summary["val_acc"] > best["val_acc"]):
                best = summary
        return best

    best = best_of([(rho, 1.0 if reweighted else None) for rho in settings["rho_grid"]])
    if reweighted:
        others = [m for m in settings["lam_multiples"] if m != 1.0]
        challenger = best_of([(best["rho"], m) for m in others]) if others else None
        if challenger is not None and challenger["val_acc"] > best["val_acc"]:
            best = challenger
    return {"rho": best["rho"], "lam_multiple": best["lam_multiple"],
            "val_acc": best["val_acc"]}, tried


def paired_rows(runs: list[dict[str, Any]], cell: Cell, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired differences of every method against each reference (SGD, SAM) on ``cell``: mean,
    95% t-interval, p-value, std of the differences and the minimal detectable difference."""
    by_method: dict[Method, dict[int, float]] = {}
    for row in runs:
        by_method.setdefault(Method(row["rule"], row["micro"]), {})[row["seed"]] = row["test_acc"]
    rows = []
    for reference in (Method(name) for name in REFERENCES):
        for method, accuracies in by_method.items():
            if method == reference:
                continue
            seeds = sorted(set(accuracies) & set(by_method[reference]))
            diff = stats.paired_difference([accuracies[s] for s in seeds],
                                           [by_method[reference][s] for s in seeds])
            mdd = (stats.minimal_detectable_difference(diff["std"], diff["n"])
                   if diff["n"] >= 2 else None)
            rows.append({"dataset": cell.dataset, "label_noise": cell.label_noise,
                         "rule": method.algorithm, "micro": method.micro,
                         "reference": reference.algorithm, "seeds": diff["n"],
                         "difference_mean": diff["mean"], "difference_std": diff["std"],
                         "ci_low": diff["ci_low"], "ci_high": diff["ci_high"],
                         "p_value": diff["p_value"], "minimal_detectable_difference": mdd})
    return rows


def summary_rows(runs: list[dict[str, Any]], cell: Cell) -> list[dict[str, Any]]:
    """Mean and std over seeds of test accuracy, tr V and the top Hessian eigenvalue, per method."""
    groups: dict[Method, list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault(Method(row["rule"], row["micro"]), []).append(row)
    rows = []
    for method, members in groups.items():
        row: dict[str, Any] = {"dataset": cell.dataset, "label_noise": cell.label_noise,
                               "rule": method.algorithm, "micro": method.micro,
                               "seeds": len(members), "rho": members[0]["rho"],
                               "lam_multiple": members[0]["lam_multiple"]}
        for key in ("test_acc", "val_acc", "train_acc", "trace_V", "hessian_top"):
            values = np.array([m[key] for m in members], dtype=float)
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


RUN_KEYS = ("batch_size", "val_fraction", "momentum", "weight_decay", "statistics_samples",
            "lanczos_iterations", "prune_margin")
"""The settings every trainer run depends on (besides its data set's setup and its own)."""
TUNE_KEYS = ("rho_grid", "lam_multiples", "tune_seed")
"""The settings a tuning chain depends on besides :data:`RUN_KEYS`."""


def task_runner(settings: dict[str, Any]) -> tuple[Runner, Cell, Method]:
    """The runner, cell and method of a task's ``settings`` (its run folders under the
    ``runs_dir`` it was handed)."""
    return (Runner(settings, Path(settings["runs_dir"]), settings["device"], False),
            Cell(settings["dataset"], settings["label_noise"]),
            Method(settings["rule"], settings["micro"]))


def tune_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """One method's tuning chain on one cell (:func:`tune`: its candidates one after another,
    each pruned against the best before it): the choice and every candidate's summary. One
    task; the trainer's seed is ``tune_seed``."""
    runner, cell, method = task_runner(settings)
    choice, tried = tune(runner, cell, method)
    return {"choice": [choice], "tuning": [_without_curve(t) for t in tried]}


def seed_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """One evaluation run of a method at its chosen setting on one cell, for the evaluation
    seed ``settings['seed']`` (the same for every method: paired). One task."""
    runner, cell, method = task_runner(settings)
    return {"run": [_without_curve(runner.run(cell, method, settings["rho"], settings["seed"],
                                              final=True,
                                              lam_multiple=settings["lam_multiple"]))]}


def cell_settings(settings: dict[str, Any], cell: Cell, method: Method) -> dict[str, Any]:
    """What every task of ``method`` on ``cell`` depends on."""
    return {"experiment": "generalization", "device": settings["device"],
            "dataset": cell.dataset, "label_noise": cell.label_noise,
            "rule": method.algorithm, "micro": method.micro,
            "dataset_setup": {cell.dataset: settings["dataset_setup"][cell.dataset]},
            **{key: settings[key] for key in RUN_KEYS}}


def measure(settings: dict[str, Any], runs_dir: Path, device: str, run: RunBatch,
            on_cell_done: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None
            ) -> dict[str, list[dict[str, Any]]]:
    """Tune and evaluate every method on every cell; the results tables of the data file.
    ``run(tasks, description)`` runs a batch of tasks: first every tuning chain and SGD's
    seed runs, then cell by cell the other seed runs; ``on_cell_done(results)`` is called with
    the tables so far after each cell."""
    cells = [Cell(d, p) for d in settings["datasets"] for p in settings["label_noise"]]
    paths = {"runs_dir": str(runs_dir.resolve())}
    seeds = range(settings["seeds"])

    def seed_tasks(cell: Cell, method: Method, choice: dict[str, Any]) -> list[Task]:
        base = {**cell_settings(settings, cell, method), "phase": "seed",
                "rho": choice["rho"], "lam_multiple": choice["lam_multiple"]}
        return [Task(seed_task, {**base, "seed": seed}, name=f"{cell.dataset}/{cell.label_noise:g} "
                     f"{method.label} seed {seed}", paths=paths) for seed in seeds]

    untuned = {"rho": None, "lam_multiple": None}
    first: dict[tuple[Cell, Method], list[Task]] = {}
    for cell in cells:
        for method in methods(settings):
            if get_rule(method.algorithm).perturbed:
                first[cell, method] = [Task(
                    tune_task, {**cell_settings(settings, cell, method), "phase": "tune",
                                **{key: settings[key] for key in TUNE_KEYS}},
                    name=f"{cell.dataset}/{cell.label_noise:g} {method.label} tuning", paths=paths)]
            else:           # nothing to tune: its seed runs start at once
                first[cell, method] = seed_tasks(cell, method, untuned)
    done = iter(run([task for tasks in first.values() for task in tasks],
                    "generalization: tuning chains and SGD runs"))
    first_records = {key: [next(done)["results"] for _ in tasks] for key, tasks in first.items()}
    results: dict[str, list[dict[str, Any]]] = {"choices": [], "tuning": [], "runs": [],
                                                "summary": [], "paired": []}
    for cell in cells:
        choices: dict[Method, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        second: dict[Method, list[Task]] = {}
        for method in methods(settings):
            records = first_records[cell, method]
            if get_rule(method.algorithm).perturbed:
                choices[method] = (records[0]["choice"][0], records[0]["tuning"])
                second[method] = seed_tasks(cell, method, choices[method][0])
            else:
                choices[method] = (untuned, [])
        done = iter(run([task for tasks in second.values() for task in tasks],
                        f"generalization: seed runs of {cell.dataset}/{cell.label_noise:g}"))
        cell_runs: list[dict[str, Any]] = []
        for method in methods(settings):
            choice, tried = choices[method]
            results["tuning"] += tried
            results["choices"].append({"dataset": cell.dataset, "label_noise": cell.label_noise,
                                       "rule": method.algorithm, "micro": method.micro,
                                       "candidates": len(tried),
                                       "pruned": sum(t["pruned_at_epoch"] is not None for t in tried),
                                       **choice})
            runs = ([next(done)["results"] for _ in second[method]] if method in second
                    else first_records[cell, method])
            cell_runs += [part["run"][0] for part in runs]
        results["runs"] += cell_runs
        results["summary"] += summary_rows(cell_runs, cell)
        results["paired"] += paired_rows(cell_runs, cell, settings)
        if on_cell_done is not None:
            on_cell_done(results)
    return results


def readme_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown tables for the README: test accuracy per method and the paired differences
    against SGD and SAM (95% CI, minimal detectable difference), beside the paper's numbers."""
    def name(row: dict[str, Any]) -> str:
        return f"{get_rule(row['rule']).label} m={row['micro']}" if row["micro"] is not None \
            else get_rule(row["rule"]).label

    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in results["summary"]:
        cells.setdefault((row["dataset"], row["label_noise"]), []).append(row)
    header = [name(r) for r in next(iter(cells.values()))] if cells else []
    lines = ["| data | noise | " + " | ".join(header) + " | paper: SGD / SAM / RW-SAM |",
             "| --- | --- |" + " --- |" * (len(header) + 1)]
    for (dataset, noise), rows in cells.items():
        where, paper = PAPER.get(noise, ("not in the paper", ()))
        lines.append(f"| {dataset} | {noise:.0%} | " + " | ".join(
            f"{r['test_acc_mean']:.2f} +- {r['test_acc_std']:.2f}" for r in rows) +
            f" | {' / '.join(map(str, paper))} ({where}) |")
    lines += ["", "| data | noise | method | vs | difference (points) | 95% CI | p | detectable (80% power) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["paired"]:
        if not get_rule(row["rule"]).perturbed:
            continue
        mdd = row["minimal_detectable_difference"]
        lines.append(f"| {row['dataset']} | {row['label_noise']:.0%} | {name(row)} | "
                     f"{get_rule(row['reference']).label} | {row['difference_mean']:+.2f} | "
                     f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] | {row['p_value']:.3f} | "
                     f"{'-' if mdd is None else f'{mdd:.2f}'} |")
    return "\n".join(lines) + "\n"


def _without_curve(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's summary as a flat record (the per-epoch validation curve left out)."""
    return {key: value for key, value in summary.items() if key != "val_curve"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = bare_parser(__doc__, "digits only, fewer epochs, seeds and candidates (< 2 minutes)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="the data sets to run (default: digits and mnist1d; --quick: digits)")
    parser.add_argument("--out", default=None,
                        help="folder for generalization.json and the figure "
                             "(default: a fresh runs/generalization-<time>/)")
    parser.add_argument("--runs-dir", default=None,
                        help="folder of the per-run trainer folders (default: OUT/runs); "
                             "finished runs found there are reused, interrupted ones resumed")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_executor_arguments(parser)
    return parser.parse_args(argv)


@exits_on_task_failure("generalization")
def main(argv: list[str] | None = None) -> int:
    """Run the protocol and write the data file and figure."""
    args = parse_args(argv)
    where = check_executor_arguments(args)
    out = prepare_out(args, "generalization")
    runs_dir = check_writable(Path(args.runs_dir) if args.runs_dir else out / "runs",
                              argument="--runs-dir")
    began, cpu_began = time.perf_counter(), time.process_time()
    settings = {"experiment": "generalization", "quick": args.quick, "device": args.device,
                **SETTINGS, **(QUICK if args.quick else {})}
    if args.datasets is not None:
        if args.quick and set(args.datasets) - set(settings["dataset_setup"]):
            raise InputError("--datasets: --quick runs digits only; got "
                             + " ".join(args.datasets))
        settings["datasets"] = args.datasets
    cells = len(settings["datasets"]) * len(settings["label_noise"])

    def write(results: dict[str, list[dict[str, Any]]]) -> None:
        done = len(results["summary"]) // len(methods(settings))
        runs = results["runs"] + results["tuning"]
        metadata = {**run_metadata(args.device), "wall_time_s": time.perf_counter() - began,
                    "cpu_time_s": time.process_time() - cpu_began, "torch_threads": args.threads,
                    "cells_done": done, "complete": done == cells, "runs": len(runs),
                    "executor": where,
                    # runs read back from --runs-dir count with the time they took when made
                    "runs_wall_time_s": sum(r["wall_seconds"] for r in runs)}
        table = atomic_write(out / "generalization.md", lambda f: f.write(readme_table(results)))
        for written in [*publish(make_record(settings, results, metadata), out), table]:
            print(f"{'wrote' if done == cells else f'wrote (cell {done} of {cells})'} {written}")

    print(f"writing to {out}; tasks run on {where}")
    with sweep_runner(args, runs_dir / "tasks") as run:
        results = measure(settings, runs_dir, args.device, run, on_cell_done=write)
    print_headline("generalization", [
        (f"{row['dataset']} {row['label_noise']:.0%} noise, {rule_name(row)}",
         f"test accuracy {estimate(row['test_acc_mean'], row['test_acc_std'])} "
         f"(± std, {row['seeds']} seeds)") for row in results["summary"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("generalization", lambda: main()))
