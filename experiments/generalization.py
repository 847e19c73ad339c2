"""Generalization on real data a CPU can train: SGD, SAM, m-SAM and RW-SAM, tuned alike and paired.

Cells: MNIST-1D with the benchmark's small CNN (``cnn1d``, trained to its published accuracy)
at 0% and 20% symmetric label noise, the same CNN with BatchNorm (m-SAM's ascent pass then
uses each micro-batch's own statistics), and scikit-learn's 8x8 digits with the MLP as a
second data set. Every method is run through the trainer (``sdesam.train``) under one protocol:

1. tuning with an equal budget (:mod:`sdesam.experiment.tuning`): SAM, m-SAM (per m) and
   RW-SAM tune rho on ``rho_grid``, SGD its weight decay on ``weight_decay_grid`` (grids of
   steps <= 2x); a choice on an edge of what was tried extends the grid by one step (at most
   ``max_extensions`` times, recorded); then two more candidates each: rho (or SGD's weight
   decay) at sqrt(2) either side of the choice, RW-SAM's lam multiples ``lam_multiples`` at
   its rho (lam = multiple / mean |grad f_i|, recalibrated on each run at its initial
   weights). A candidate scores its validation accuracy averaged over ``tune_seeds``; only a
   candidate at chance (validation accuracy below ``prune_below`` at a third of training) is
   stopped. The validation split is ``val_fraction`` of the training data, stratified, and
   under label noise its labels are as noisy as the training labels (``--validation clean``
   selects on the true labels instead, an ablation: every run records both); the test set is
   never looked at;
2. evaluation: ``seeds`` seeds at the chosen settings, the same for every method; each seed is
   the trainer's seed (initialisation, batch order) and its ``data_seed`` (validation split,
   label-noise draw), so the paired differences cover the split as well. Each run reports its
   final test accuracy, tr V (exact per-sample gradients) and the top Hessian eigenvalue of the
   training loss (Lanczos), both on the first ``statistics_samples`` training samples;
3. statistics: mean +- std per method, paired differences (SAM - SGD, each m-SAM - SAM,
   RW-SAM - SAM, and every method against SGD and SAM) with 95% t-intervals, the minimal
   detectable difference of the design (80% power, alpha 0.05, from the observed spread) and
   the verdict on each claimed gain (:func:`sdesam.stats.gain_verdict`, against
   ``relevant_difference`` points).

Every run lives in its own trainer folder under ``--runs-dir`` with a ``summary.json``; a
re-started experiment skips finished runs and continues interrupted ones exactly. The runs are
tasks, run in parallel (``--jobs``, ``--scheduler``) in rounds over every cell: the grids, the
edge extensions, the second stage, then the seed runs cell by cell. Each task writes
``RUNS_DIR/tasks/<key>.json`` and is skipped when it exists. Writes ``OUT/generalization.json``
and the figure (accuracy against m, the paired differences and the tuning curves) after every
finished cell (``metadata.complete`` says whether all cells are in).
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
from sdesam.experiment import tuning
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
from sdesam.train.setup import Diverged
from sdesam.validation import InputError

DATASETS: dict[str, dict[str, Any]] = {
    # 30 epochs: SGD reaches the benchmark's published ~94% on MNIST-1D (10 gave 86-88%)
    "mnist1d": {"model": "cnn1d", "lr": 0.1, "epochs": 30},
    "digits": {"model": "mlp1d", "lr": 0.05, "epochs": 20},
}
VALIDATIONS: dict[str, str] = {
    "noisy": "val_acc",          # the validation labels carry the training labels' noise
    "clean": "val_clean_acc",    # the true labels (an ablation: a practitioner has not got them)
}
"""Which validation labels a candidate is scored on, and the run summary's key for it."""
SETTINGS: dict[str, Any] = {
    "cells": [{"dataset": "mnist1d", "label_noise": 0.0, "norm": "none"},
              {"dataset": "mnist1d", "label_noise": 0.2, "norm": "none"},
              {"dataset": "mnist1d", "label_noise": 0.0, "norm": "bn"},
              {"dataset": "digits", "label_noise": 0.0, "norm": "none"},
              {"dataset": "digits", "label_noise": 0.2, "norm": "none"}],
    "batch_size": 32, "micros": [1, 4],
    "rho_grid": tuning.geometric_grid(0.005, 2.0, 8),              # 0.005 ... 0.64
    "weight_decay_grid": tuning.geometric_grid(6.25e-5, 2.0, 8),   # 6.25e-5 ... 8e-3
    "lam_multiples": [0.5, 2.0], "max_extensions": 2,
    "tune_seeds": [1000, 1001], "seeds": 12, "validation": "noisy",
    "val_fraction": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "prune_below": 15.0,
    "statistics_samples": 1024, "lanczos_iterations": 10, "relevant_difference": 1.0,
    "dataset_setup": DATASETS,
}
QUICK: dict[str, Any] = {
    "cells": [{"dataset": "digits", "label_noise": 0.2, "norm": "none"}],
    "micros": [4], "rho_grid": [0.05, 0.1], "weight_decay_grid": [2.5e-4, 5e-4],
    "lam_multiples": [2.0], "max_extensions": 1, "seeds": 3,
    "lanczos_iterations": 5, "statistics_samples": 256,
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

    @property
    def tuned(self) -> str:
        """The parameter its tuning searches: rho for the rules that perturb, the weight decay
        (the regulariser it has) for SGD."""
        return "rho" if get_rule(self.algorithm).perturbed else "weight_decay"

    @property
    def reweighted(self) -> bool:
        """Whether it has RW-SAM's second parameter, lam."""
        return get_rule(self.algorithm).weighted


@dataclass(frozen=True)
class Cell:
    """One data set at one label-noise level, with or without BatchNorm."""

    dataset: str
    label_noise: float
    norm: str = "none"

    @property
    def name(self) -> str:
        """Its run folder: mnist1d-noise0.2, mnist1d-bn-noise0."""
        return f"{self.dataset}{'' if self.norm == 'none' else '-' + self.norm}-noise{self.label_noise:g}"

    def where(self) -> dict[str, Any]:
        """Its fields, as every table row of the cell carries them."""
        return {"dataset": self.dataset, "label_noise": self.label_noise, "norm": self.norm}


@dataclass(frozen=True)
class Setting:
    """What a run of a method is trained with: the tuned parameter's value (rho, or SGD's
    weight decay) and RW-SAM's lam multiple (None for the others)."""

    value: float
    lam_multiple: float | None = None


class _Pruned(Exception):
    """Raised from the trainer's epoch callback to stop a tuning candidate at chance."""


def methods(settings: dict[str, Any]) -> list[Method]:
    """SGD, SAM (m = B), m-SAM for each m of ``micros`` (m < B) and RW-SAM."""
    return [Method("sgd"), Method("sam"), *[Method("m-sam", m) for m in settings["micros"]],
            Method("rw-sam")]


def cells(settings: dict[str, Any]) -> list[Cell]:
    """The cells of ``settings``, in order."""
    return [Cell(c["dataset"], float(c["label_noise"]), c["norm"]) for c in settings["cells"]]


class Runner:
    """Runs (or reads back) one trainer run per (cell, method, setting, seed)."""

    def __init__(self, settings: dict[str, Any], runs_dir: Path, device: str):
        self.settings, self.runs_dir, self.device = settings, runs_dir, device

    def config(self, cell: Cell, method: Method, setting: Setting, seed: int, final: bool,
               lam: float | None = None) -> TrainConfig:
        """The trainer settings of one run: seed and data_seed both ``seed``, noisy validation
        labels under label noise (both accuracies are recorded), tr V at the end of evaluation
        runs; ``lam`` reaches the trainer only for rules that take it."""
        setup, s = self.settings["dataset_setup"][cell.dataset], self.settings
        rho = setting.value if method.tuned == "rho" else None
        weight_decay = setting.value if method.tuned == "weight_decay" else s["weight_decay"]
        lam_part = "" if setting.lam_multiple is None else f"-lam{setting.lam_multiple:g}"
        name = f"{cell.name}/{method.label}-{method.tuned}{setting.value:g}{lam_part}-seed{seed}"
        return TrainConfig(out=str(self.runs_dir / name), dataset=cell.dataset, model=setup["model"],
                           norm=cell.norm, val_fraction=s["val_fraction"],
                           label_noise=cell.label_noise, data_seed=seed,
                           noisy_validation=cell.label_noise > 0,
                           optimizer=method.algorithm, rho=rho, micro=method.micro,
                           lam=lam if method.reweighted else None,
                           lr=setup["lr"], momentum=s["momentum"], weight_decay=weight_decay,
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

    def run(self, cell: Cell, method: Method, setting: Setting, seed: int, *,
            final: bool) -> dict[str, Any]:
        """One run's summary (read back when it exists): accuracies on the noisy and the true
        validation labels, test accuracy, where it stopped (at chance, or diverged) and for
        evaluation runs tr V and the top Hessian eigenvalue."""
        config = self.config(cell, method, setting, seed, final)
        mean_norm = None
        if setting.lam_multiple is not None:
            lam, mean_norm = self.calibrate_lam(config, setting.lam_multiple)
            config = self.config(cell, method, setting, seed, final, lam)
        path = Path(config.out) / "summary.json"
        if path.is_file():
            return read_record(path)["results"]["run"][0]
        began = time.perf_counter()
        pruned_at, diverged, model = None, None, None
        try:
            model = train(config, on_epoch_end=self._pruner(config.epochs, final)).model
        except _Pruned as stop:
            pruned_at = int(str(stop))
        except Diverged as error:
            diverged = error.record
        metrics = [json.loads(line) for line in
                   (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
        last = metrics[-1] if metrics else {}
        summary: dict[str, Any] = {
            **cell.where(), "rule": method.algorithm, "micro": method.micro,
            "rho": config.rho, "weight_decay": config.weight_decay, "seed": seed,
            "data_seed": config.data_seed, "lam_multiple": setting.lam_multiple,
            "lam": config.lam if setting.lam_multiple is not None else None,
            "mean_grad_norm": mean_norm, "epochs": len(metrics), "pruned_at_epoch": pruned_at,
            "diverged": diverged,
            **{key: last.get(key) for key in ("val_acc", "val_clean_acc", "test_acc", "train_acc")},
            "train_seconds": sum(m["epoch_time_s"] for m in metrics),
        }
        if cell.label_noise == 0:   # one set of validation labels: the true ones
            summary["val_clean_acc"] = summary["val_acc"]
        if final:
            finished = model is not None
            summary["trace_V"] = last.get("trace_V") if finished else None
            summary["hessian_top"] = self.hessian_top(config, model, seed) if finished else None
        summary["wall_seconds"] = time.perf_counter() - began
        write_json(path, make_record({"experiment": "generalization_run"}, {"run": [summary]}, {}))
        return summary

    def _pruner(self, epochs: int, final: bool) -> Callable[[dict[str, Any]], None]:
        """The epoch callback stopping a tuning candidate whose validation accuracy is still
        below ``prune_below`` (chance plus a margin) a third of the way through training;
        evaluation runs are never stopped."""
        check_at, below = max(1, epochs // 3), self.settings["prune_below"]

        def check(record: dict[str, Any]) -> None:
            if not final and record["epoch"] == check_at < epochs and record["val_acc"] < below:
                raise _Pruned(str(record["epoch"]))
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


RUN_KEYS = ("batch_size", "val_fraction", "momentum", "weight_decay", "statistics_samples",
            "lanczos_iterations", "prune_below")
"""The settings every trainer run depends on (besides its data set's setup and its own)."""


def cell_settings(settings: dict[str, Any], cell: Cell, method: Method) -> dict[str, Any]:
    """What every task of ``method`` on ``cell`` depends on."""
    return {"experiment": "generalization", "device": settings["device"], **cell.where(),
            "rule": method.algorithm, "micro": method.micro,
            "dataset_setup": {cell.dataset: settings["dataset_setup"][cell.dataset]},
            **{key: settings[key] for key in RUN_KEYS}}


def run_task(settings: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """One trainer run (a tuning candidate on one tuning seed, or an evaluation seed at the
    chosen setting): its summary. The trainer's seed is ``settings['seed']``, the same for
    every method (paired), not the task's derived seed."""
    runner = Runner(settings, Path(settings["runs_dir"]), settings["device"])
    cell = Cell(settings["dataset"], settings["label_noise"], settings["norm"])
    method = Method(settings["rule"], settings["micro"])
    setting = Setting(settings["value"], settings["lam_multiple"])
    return {"run": [runner.run(cell, method, setting, settings["seed"],
                               final=settings["phase"] == "seed")]}


class Tuning:
    """The tuning of every method on every cell, in rounds of independent runs: the grids, at
    most ``max_extensions`` edge extensions, the second stage (see the module doc)."""

    def __init__(self, settings: dict[str, Any], run: RunBatch, paths: dict[str, str]):
        self.settings, self.run, self.paths = settings, run, paths
        self.score_key = VALIDATIONS[settings["validation"]]
        self.candidates: dict[tuple[Cell, Method], list[tuning.Candidate]] = {}
        self.runs: dict[tuple[Cell, Method], list[dict[str, Any]]] = {}
        self.extensions: dict[tuple[Cell, Method], list[float]] = {}

    def grid(self, method: Method) -> list[float]:
        """The first-stage grid of ``method``'s tuned parameter."""
        return self.settings["rho_grid" if method.tuned == "rho" else "weight_decay_grid"]

    def tune(self, keys: list[tuple[Cell, Method]]) -> None:
        """Every round for every (cell, method) of ``keys``."""
        self._round({key: [(v, 1.0 if key[1].reweighted else None) for v in self.grid(key[1])]
                     for key in keys}, "grid", "generalization: tuning grids")
        for round_ in range(self.settings["max_extensions"]):
            wanted = {key: tuning.edge_extension(self.candidates[key]) for key in keys}
            wanted = {key: value for key, value in wanted.items() if value is not None}
            if not wanted:
                break
            for key, value in wanted.items():
                self.extensions.setdefault(key, []).append(value)
            self._round({key: [(value, 1.0 if key[1].reweighted else None)]
                         for key, value in wanted.items()}, "extension",
                        f"generalization: grid extensions, round {round_ + 1}")
        second = {}
        for key in keys:
            chosen = tuning.best(self.candidates[key])
            if chosen is not None:
                seconds = self.settings["lam_multiples"] if key[1].reweighted else ()
                second[key] = tuning.refinement(chosen, seconds)
        self._round(second, "refinement", "generalization: second stage")

    def _round(self, wanted: dict[tuple[Cell, Method], list[tuple[float, float | None]]],
               stage: str, description: str) -> None:
        """Run ``wanted``'s candidates on every tuning seed and add them, scored."""
        tasks, owners = [], []
        for (cell, method), pairs in wanted.items():
            for value, second in pairs:
                for seed in self.settings["tune_seeds"]:
                    tasks.append(Task(run_task, {
                        **cell_settings(self.settings, cell, method), "phase": "tune",
                        "value": value, "lam_multiple": second, "seed": seed},
                        name=f"{cell.name} {method.label} {method.tuned}={value:g}"
                             f"{'' if second is None else f' lam x{second:g}'} seed {seed}",
                        paths=self.paths))
                owners.append((cell, method, value, second))
        records = iter(self.run(tasks, description))
        for cell, method, value, second in owners:
            summaries = [next(records)["results"]["run"][0] for _ in self.settings["tune_seeds"]]
            self.runs.setdefault((cell, method), []).extend(summaries)
            self.candidates.setdefault((cell, method), []).append(tuning.Candidate(
                value, second, stage, [None if s["pruned_at_epoch"] is not None or s["diverged"]
                                       else s[self.score_key] for s in summaries]))

    def choice(self, cell: Cell, method: Method) -> dict[str, Any]:
        """The choice row of ``method`` on ``cell``: the chosen setting, its score, the
        candidates tried (per stage), stopped and diverged, the extensions, whether the
        choice still sits on an edge, and what the other validation labels would choose."""
        key = (cell, method)
        candidates, runs = self.candidates[key], self.runs[key]
        chosen = tuning.best(candidates)
        values = [c.value for c in candidates]
        other_key = next(k for k in VALIDATIONS.values() if k != self.score_key)
        other = tuning.best([tuning.Candidate(
            c.value, c.second, c.stage,
            [None if s is None else r[other_key] for s, r in zip(
                c.scores, runs[i * len(c.scores):(i + 1) * len(c.scores)])])
            for i, c in enumerate(candidates)])
        return {**cell.where(), "rule": method.algorithm, "micro": method.micro,
                "tuned": method.tuned,
                "value": None if chosen is None else chosen.value,
                "lam_multiple": None if chosen is None else chosen.second,
                "score": None if chosen is None else chosen.score,
                "selected_on": self.settings["validation"],
                "candidates": len(candidates),
                **{f"{stage}_candidates": sum(c.stage == stage for c in candidates)
                   for stage in ("grid", "extension", "refinement")},
                "stopped_at_chance": sum(r["pruned_at_epoch"] is not None for r in runs),
                "diverged": sum(r["diverged"] is not None for r in runs),
                "extended_to": self.extensions.get(key, []),
                "on_edge": chosen is not None and chosen.value in (min(values), max(values)),
                "other_validation_value": None if other is None else other.value,
                "other_validation_lam_multiple": None if other is None else other.second}

    def curve(self, cell: Cell, method: Method) -> list[dict[str, Any]]:
        """The tuning curve rows of ``method`` on ``cell``: per candidate, the mean validation
        (noisy and true labels) and test accuracy over the tuning seeds that finished."""
        candidates, runs = self.candidates[(cell, method)], self.runs[(cell, method)]
        rows = []
        for i, candidate in enumerate(candidates):
            members = runs[i * len(candidate.scores):(i + 1) * len(candidate.scores)]
            finished = [r for r, s in zip(members, candidate.scores) if s is not None]
            rows.append({**cell.where(), "rule": method.algorithm, "micro": method.micro,
                         "tuned": method.tuned, "value": candidate.value,
                         "lam_multiple": candidate.second, "stage": candidate.stage,
                         "score": candidate.score, "finished": len(finished),
                         **{key: float(np.mean([r[key] for r in finished])) if finished else None
                            for key in ("val_acc", "val_clean_acc", "test_acc", "train_acc")},
                         "wall_seconds": sum(r["wall_seconds"] for r in members)})
        return rows


def paired_rows(runs: list[dict[str, Any]], cell: Cell, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired differences of every method against each reference (SGD, SAM) on ``cell``: mean,
    95% t-interval, p-value, std of the differences, the minimal detectable difference and the
    verdict on the gain (:func:`sdesam.stats.gain_verdict`). Seeds where either run has no
    test accuracy (diverged) are left out and counted."""
    by_method: dict[Method, dict[int, float]] = {}
    for row in runs:
        accuracy = row["test_acc"] if row["test_acc"] is not None else float("nan")
        by_method.setdefault(Method(row["rule"], row["micro"]), {})[row["seed"]] = accuracy
    rows = []
    for reference in (Method(name) for name in REFERENCES):
        if reference not in by_method:
            continue
        for method, accuracies in by_method.items():
            if method == reference:
                continue
            seeds = sorted(set(accuracies) & set(by_method[reference]))
            diff = stats.paired_difference([accuracies[s] for s in seeds],
                                           [by_method[reference][s] for s in seeds])
            mdd = (stats.minimal_detectable_difference(diff["std"], diff["n"])
                   if diff["n"] >= 2 else None)
            rows.append({**cell.where(), "rule": method.algorithm, "micro": method.micro,
                         "reference": reference.algorithm, "seeds": diff["n"],
                         "diverged": diff["diverged"],
                         "difference_mean": diff["mean"], "difference_std": diff["std"],
                         "ci_low": diff["ci_low"], "ci_high": diff["ci_high"],
                         "p_value": diff["p_value"], "minimal_detectable_difference": mdd,
                         "verdict": stats.gain_verdict(diff["ci_low"], diff["ci_high"],
                                                       settings["relevant_difference"])})
    return rows


def summary_rows(runs: list[dict[str, Any]], cell: Cell, choices: dict[Method, dict[str, Any]],
                 chance: float) -> list[dict[str, Any]]:
    """Mean and std over seeds of test, validation and train accuracy, tr V and the top Hessian
    eigenvalue per method, with its chosen setting (runs that diverged are counted, not
    averaged; runs that ended at chance, test accuracy below ``chance``, are averaged -- the
    method did that at its chosen setting -- and counted, with the median beside the mean)."""
    groups: dict[Method, list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault(Method(row["rule"], row["micro"]), []).append(row)
    rows = []
    for method, members in groups.items():
        finished = [m for m in members if m["diverged"] is None]
        choice = choices[method]
        row: dict[str, Any] = {**cell.where(), "rule": method.algorithm, "micro": method.micro,
                               "seeds": len(finished), "diverged": len(members) - len(finished),
                               "at_chance": sum(m["test_acc"] < chance for m in finished),
                               "tuned": method.tuned, "value": choice["value"],
                               "rho": members[0]["rho"], "weight_decay": members[0]["weight_decay"],
                               "lam_multiple": choice["lam_multiple"]}
        for key in ("test_acc", "val_acc", "val_clean_acc", "train_acc", "trace_V", "hessian_top"):
            values = np.array([m[key] for m in finished], dtype=float)
            row[f"{key}_mean"] = float(values.mean()) if len(values) else None
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["test_acc_median"] = (float(np.median([m["test_acc"] for m in finished]))
                                  if finished else None)
        rows.append(row)
    return rows


def measure(settings: dict[str, Any], runs_dir: Path, run: RunBatch,
            on_cell_done: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None
            ) -> dict[str, list[dict[str, Any]]]:
    """Tune every method on every cell, then evaluate cell by cell; the results tables of the
    data file. ``run(tasks, description)`` runs a batch of tasks; ``on_cell_done(results)`` is
    called with the tables so far after each cell's seed runs."""
    paths = {"runs_dir": str(runs_dir.resolve())}
    keys = [(cell, method) for cell in cells(settings) for method in methods(settings)]
    tuned = Tuning(settings, run, paths)
    tuned.tune(keys)
    results: dict[str, list[dict[str, Any]]] = {"choices": [], "tuning": [], "runs": [],
                                                "summary": [], "paired": []}
    for cell in cells(settings):
        choices = {method: tuned.choice(cell, method) for method in methods(settings)}
        chosen = [method for method in methods(settings) if choices[method]["value"] is not None]
        tasks = [Task(run_task, {**cell_settings(settings, cell, method), "phase": "seed",
                                 "value": choices[method]["value"],
                                 "lam_multiple": choices[method]["lam_multiple"], "seed": seed},
                      name=f"{cell.name} {method.label} seed {seed}", paths=paths)
                 for method in chosen for seed in range(settings["seeds"])]
        cell_runs = [record["results"]["run"][0] for record in
                     run(tasks, f"generalization: seed runs of {cell.name}")]
        results["choices"] += list(choices.values())
        results["tuning"] += [row for method in methods(settings) for row in tuned.curve(cell, method)]
        results["runs"] += cell_runs
        results["summary"] += summary_rows(cell_runs, cell, choices, settings["prune_below"])
        results["paired"] += paired_rows(cell_runs, cell, settings)
        if on_cell_done is not None:
            on_cell_done(results)
    return results


def claims(settings: dict[str, Any]) -> list[tuple[str, int | None, str, str]]:
    """The gains the paper's story predicts, read off the paired table, as (rule, micro,
    reference, the claim in words): SAM over SGD, each m-SAM over SAM (smaller m generalizes
    better), RW-SAM over SAM."""
    return [("sam", None, "sgd", "SAM beats SGD"),
            *[("m-sam", m, "sam", f"m-SAM m={m} beats SAM (m=B={settings['batch_size']})")
              for m in settings["micros"]],
            ("rw-sam", None, "sam", "RW-SAM beats SAM")]


def _name(row: dict[str, Any]) -> str:
    """The rule's display name, with its m for the micro-batch rules."""
    label = get_rule(row["rule"]).label
    return f"{label} m={row['micro']}" if row["micro"] is not None else label


def _cell_name(row: dict[str, Any]) -> str:
    """data (BN), noise as the README tables write it."""
    return f"{row['dataset']}{' BN' if row['norm'] == 'bn' else ''}, {row['label_noise']:.0%}"


def readme_table(results: dict[str, list[dict[str, Any]]], settings: dict[str, Any]) -> str:
    """Markdown tables for the README: test accuracy per method with its chosen setting, the
    verdict on each claimed gain (paired difference, 95% CI, minimal detectable difference),
    and every paired difference against SGD and SAM with p-values."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in results["summary"]:
        by_cell.setdefault(_cell_name(row), []).append(row)
    header = [_name(r) for r in next(iter(by_cell.values()))] if by_cell else []
    lines = ["| data, noise | " + " | ".join(header) + " | paper: SGD / SAM / RW-SAM |",
             "| --- |" + " --- |" * (len(header) + 1)]
    for cell, rows in by_cell.items():
        where, paper = PAPER.get(rows[0]["label_noise"], ("not in the paper", ()))
        lines.append(f"| {cell} | " + " | ".join(
            _accuracy(r) for r in rows) + f" | {' / '.join(map(str, paper))} ({where}) |")
    lines += ["", "| data, noise | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
    for cell, rows in by_cell.items():
        lines.append(f"| {cell} (chosen) | " + " | ".join(
            f"{'wd' if r['tuned'] == 'weight_decay' else 'rho'} {r['value']:.3g}"
            + (f", lam ×{r['lam_multiple']:g}" if r["lam_multiple"] is not None else "")
            for r in rows) + " |")
    lines += ["", "| data, noise | claim | difference (points) | 95% CI | detectable (80% power) "
                  "| verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for rule, micro, reference, claim in claims(settings):
        for row in results["paired"]:
            if (row["rule"], row["micro"], row["reference"]) == (rule, micro, reference):
                lines.append(f"| {_cell_name(row)} | {claim} | {row['difference_mean']:+.2f} | "
                             f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] | "
                             f"{_number(row['minimal_detectable_difference'])} | {row['verdict']} |")
    lines += ["", "| data, noise | method | vs | difference (points) | 95% CI | p | detectable |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["paired"]:
        lines.append(f"| {_cell_name(row)} | {_name(row)} | {get_rule(row['reference']).label} | "
                     f"{row['difference_mean']:+.2f} | [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] "
                     f"| {_number(row['p_value'], 3)} | {_number(row['minimal_detectable_difference'])} |")
    return "\n".join(lines) + "\n"


def _accuracy(row: dict[str, Any]) -> str:
    """Mean ± std of a summary row's test accuracy, with the median and the count of seeds
    that ended at chance when there are any, and of seeds that diverged."""
    if row["test_acc_mean"] is None:
        return "diverged"
    text = f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}"
    if row["at_chance"]:
        text += f" ({row['at_chance']} of {row['seeds']} at chance; median {row['test_acc_median']:.2f})"
    if row["diverged"]:
        text += f" ({row['diverged']} diverged)"
    return text


def _number(value: float | None, digits: int = 2) -> str:
    """``value`` to ``digits`` decimals, or a dash for none."""
    return "-" if value is None else f"{value:.{digits}f}"


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse a design that breaks the protocol, before any work: grids of steps <= 2x, every
    cell's data set and norm known, at least two tuning seeds and two evaluation seeds,
    evaluation seeds distinct from the tuning seeds, a known validation."""
    tuning.check_grid("rho_grid", settings["rho_grid"])
    tuning.check_grid("weight_decay_grid", settings["weight_decay_grid"])
    for cell in cells(settings):
        if cell.dataset not in settings["dataset_setup"]:
            raise InputError(f"cells: dataset must be one of {sorted(settings['dataset_setup'])}; "
                             f"got {cell.dataset!r}")
        if cell.norm not in ("none", "bn"):
            raise InputError(f"cells: norm must be 'none' or 'bn'; got {cell.norm!r}")
    if len(settings["tune_seeds"]) < 2 or settings["seeds"] < 2:
        raise InputError(f"tune_seeds and seeds must each number at least 2; got "
                         f"{settings['tune_seeds']} and {settings['seeds']}")
    if set(settings["tune_seeds"]) & set(range(settings["seeds"])):
        raise InputError(f"tune_seeds must differ from the evaluation seeds 0..{settings['seeds'] - 1}; "
                         f"got {settings['tune_seeds']}")
    if settings["validation"] not in VALIDATIONS:
        raise InputError(f"--validation must be one of {', '.join(VALIDATIONS)}; "
                         f"got {settings['validation']!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = bare_parser(__doc__, "one digits cell at 20%% noise, 4 epochs, small grids, 3 seeds "
                                  "(about 2 minutes on two cores)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="run only the cells of these data sets (default: every cell)")
    parser.add_argument("--validation", choices=list(VALIDATIONS), default=None,
                        help="the validation labels candidates are scored on under label noise: "
                             "noisy, like the training labels (default), or clean (an ablation)")
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


def build_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings from the defaults, --quick, --datasets and --validation, checked."""
    settings = {"experiment": "generalization", "quick": args.quick, "device": args.device,
                **SETTINGS, **(QUICK if args.quick else {})}
    if args.datasets is not None:
        kept = [c for c in settings["cells"] if c["dataset"] in args.datasets]
        if not kept:
            raise InputError(f"--datasets: the {'quick ' if args.quick else ''}design has cells of "
                             f"{sorted({c['dataset'] for c in settings['cells']})} only; got "
                             + " ".join(args.datasets))
        settings["cells"] = kept
    if args.validation is not None:
        settings["validation"] = args.validation
    check_settings(settings)
    return settings


@exits_on_task_failure("generalization")
def main(argv: list[str] | None = None) -> int:
    """Run the protocol and write the data file and figure."""
    args = parse_args(argv)
    where = check_executor_arguments(args)
    settings = build_settings(args)
    out = prepare_out(args, "generalization")
    runs_dir = check_writable(Path(args.runs_dir) if args.runs_dir else out / "runs",
                              argument="--runs-dir")
    began, cpu_began = time.perf_counter(), time.process_time()
    total = len(cells(settings))

    def write(results: dict[str, list[dict[str, Any]]]) -> None:
        done = len({_cell_name(row) for row in results["summary"]})
        metadata = {**run_metadata(args.device), "wall_time_s": time.perf_counter() - began,
                    "cpu_time_s": time.process_time() - cpu_began, "torch_threads": args.threads,
                    "cells_done": done, "complete": done == total, "executor": where,
                    "runs": len(results["runs"]) + sum(
                        c["candidates"] * len(settings["tune_seeds"]) for c in results["choices"]),
                    # runs read back from --runs-dir count with the time they took when made
                    "runs_wall_time_s": sum(r["wall_seconds"] for r in
                                            results["runs"] + results["tuning"])}
        table = atomic_write(out / "generalization.md",
                             lambda f: f.write(readme_table(results, settings)))
        for written in [*publish(make_record(settings, results, metadata), out), table]:
            print(f"{'wrote' if done == total else f'wrote (cell {done} of {total})'} {written}")

    print(f"tasks run on {where}")
    with sweep_runner(args, runs_dir / "tasks") as run:
        results = measure(settings, runs_dir, run, on_cell_done=write)
    print_headline("generalization", [
        (f"{_cell_name(row)} noise, {rule_name(row)}",
         f"test accuracy {estimate(row['test_acc_mean'], row['test_acc_std'])} "
         f"(± std, {row['seeds']} seeds)") for row in results["summary"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("generalization", lambda: main()))
