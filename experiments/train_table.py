"""The paper's CIFAR grid (Table 1): models x {SGD, SAM, RW-SAM} x seeds, as a table beside the
paper's numbers.

Each run trains with ``sdesam.train`` into OUT/<dataset>/<model>/<rule>/seed<k>/ and is
resumable: finished runs are skipped, interrupted ones continue from their checkpoint, so the
command can simply be repeated with the same ``--out`` (without ``--out`` a run starts in a
fresh ``runs/train_table-<time>/`` and says where). The table (final-epoch test accuracy,
mean ± sample standard deviation over the seeds) is written to OUT/<dataset>-table.md and
OUT/<dataset>-table.json (the one record schema: settings, metadata, results).

Training set-up: the defaults of ``sdesam train`` (SGD momentum 0.9, lr 0.1, cosine, 200 epochs,
batch 256, weight decay 5e-4, rho 0.05 / 0.1, crop + flip), which follow the first author's
previous SAM paper because this paper's set-up is not known; RW-SAM's lam and delta are not
known either (flags).

example (a full CIFAR-10 table, 27 runs of 200 epochs: GPU hours):
  python experiments/train_table.py --dataset cifar10 --data-dir ~/data --device cuda \\
      --out runs/cifar10-table
quick demo on the synthetic set (about 5 minutes on a busy 2-core CPU):
  python experiments/train_table.py --dataset synthetic --models small --seeds 0 1 \\
      --epochs 2 --batch 64 --out runs/table-demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from sdesam.algorithms import get_rule
from sdesam.cli import OneLineParser, guarded
from sdesam.experiment.arguments import prepare_out
from sdesam.experiment.headline import estimate, print_headline, rule_name
from sdesam.experiment.records import atomic_write, make_record, timed_metadata, write_json
from sdesam.optim import optimizer_names
from sdesam.train import TrainConfig, train
from sdesam.train.data import DATASETS
from sdesam.train.models import MODELS

# Table 1 of the paper: test accuracy (%) mean and std, CIFAR from scratch
PAPER_TABLE1: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("cifar10", "resnet18"): {"sgd": (95.62, 0.03), "sam": (95.99, 0.07), "rw-sam": (96.24, 0.05)},
    ("cifar10", "resnet50"): {"sgd": (95.64, 0.37), "sam": (96.06, 0.04), "rw-sam": (96.34, 0.04)},
    ("cifar10", "wrn28-10"): {"sgd": (96.47, 0.03), "sam": (96.91, 0.02), "rw-sam": (97.11, 0.05)},
    ("cifar100", "resnet18"): {"sgd": (78.91, 0.18), "sam": (78.90, 0.27), "rw-sam": (79.31, 0.28)},
    ("cifar100", "resnet50"): {"sgd": (79.55, 0.16), "sam": (80.31, 0.35), "rw-sam": (80.83, 0.05)},
    ("cifar100", "wrn28-10"): {"sgd": (81.55, 0.15), "sam": (83.25, 0.07), "rw-sam": (83.52, 0.08)},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line settings of the grid."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10")
    parser.add_argument("--data-dir", default=None, help="folder with the CIFAR python batches")
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        default=["resnet18", "resnet50", "wrn28-10"])
    parser.add_argument("--rules", nargs="+", choices=optimizer_names(), default=["sgd", "sam", "rw-sam"],
                        help="the update rules of the table's columns")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch_size, help="batch size")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--rho", type=float, default=None, help="default 0.05 / 0.1 (cifar100)")
    parser.add_argument("--lam", type=float, default=TrainConfig.lam, help="RW-SAM lam")
    parser.add_argument("--delta", type=float, default=TrainConfig.delta, help="RW-SAM delta")
    parser.add_argument("--micro", type=int, default=None, help="m of the rules with micro-batches")
    parser.add_argument("--norm", choices=("bn", "gn"), default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic-train", type=int, default=TrainConfig.synthetic_train)
    parser.add_argument("--synthetic-test", type=int, default=TrainConfig.synthetic_test)
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the table from the finished runs; train nothing")
    parser.add_argument("--out", default=None,
                        help="folder of the runs and the table (default: a fresh "
                             "runs/train_table-<time>/; repeat with the same --out to resume)")
    return parser.parse_args(argv)


def run_dir(out: Path, dataset: str, model: str, rule: str, seed: int) -> Path:
    """Where one cell's run writes its files."""
    return out / dataset / model / rule / f"seed{seed}"


def final_accuracy(folder: Path, epochs: int) -> float | None:
    """The last epoch's test accuracy of a finished run, else None."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records or records[-1]["epoch"] < epochs:
        return None
    return float(records[-1]["test_acc"])


def cell_config(args: argparse.Namespace, model: str, rule: str, seed: int) -> TrainConfig:
    """The TrainConfig of one (model, rule, seed) cell."""
    return TrainConfig(
        out=str(run_dir(Path(args.out), args.dataset, model, rule, seed)),
        dataset=args.dataset, data_dir=args.data_dir, synthetic_train=args.synthetic_train,
        synthetic_test=args.synthetic_test, model=model, norm=args.norm, optimizer=rule,
        rho=args.rho, lam=args.lam, delta=args.delta,
        micro=args.micro if get_rule(rule).micro else None, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch, seed=seed, device=args.device, resume=True)


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one seed) and count."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def build_table(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the finished runs into {model: {rule: summary | None}}."""
    table: dict[str, Any] = {}
    for model in args.models:
        table[model] = {}
        for rule in args.rules:
            found = [final_accuracy(run_dir(Path(args.out), args.dataset, model, rule, s),
                                    args.epochs) for s in args.seeds]
            values = [v for v in found if v is not None]
            table[model][rule] = summarize(values) if values else None
    return table


def table_rows(dataset: str, table: dict[str, Any], micro: int | None) -> list[dict[str, Any]]:
    """The table as flat records, one per (model, rule): our mean, std and per-seed values
    (null / empty for a cell with no finished run) beside the paper's Table 1 value."""
    rows = []
    for model, cells in table.items():
        for rule, ours in cells.items():
            ours = ours or {"mean": None, "std": None, "n": 0, "values": []}
            paper = PAPER_TABLE1.get((dataset, model), {}).get(rule, (None, None))
            rows.append({"model": model, "rule": rule, "micro": micro if get_rule(rule).micro else None,
                         "test_accuracy": ours["mean"], "test_accuracy_std": ours["std"],
                         "seeds": ours["n"], "values": ours["values"],
                         "paper_test_accuracy": paper[0], "paper_test_accuracy_std": paper[1]})
    return rows


def markdown(dataset: str, table: dict[str, Any], rules: list[str]) -> str:
    """The table as Markdown: ours (mean ± std, seeds) beside the paper's Table 1 value."""
    header = "| model | " + " | ".join(f"{r} (ours) | {r} (paper)" for r in rules) + " |"
    lines = [f"Test accuracy (%) on {dataset}, final epoch, mean ± std over seeds.", "",
             header, "|" + " --- |" * (1 + 2 * len(rules))]
    for model, row in table.items():
        cells = []
        for rule in rules:
            ours = row[rule]
            cells.append("—" if ours is None else
                         f"{ours['mean']:.2f} ± {ours['std']:.2f} (n={ours['n']})")
            paper = PAPER_TABLE1.get((dataset, model), {}).get(rule)
            cells.append("—" if paper is None else f"{paper[0]:.2f} ± {paper[1]:.2f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train the missing cells of the grid, then write the table."""
    args = parse_args(argv)
    if args.table_only and args.out is None:
        raise ValueError("--table-only needs --out naming the folder of the finished runs")
    out = prepare_out(args, "train_table")
    wall, cpu = time.perf_counter(), time.process_time()
    configs = [cell_config(args, m, r, s) for m in args.models for r in args.rules
               for s in args.seeds]
    for config in configs:
        config.validate()
    if not args.table_only:
        for index, config in enumerate(configs, 1):
            if final_accuracy(Path(config.out), config.epochs) is not None:
                continue
            print(f"[{index}/{len(configs)}] {config.model} {config.optimizer} seed {config.seed}")
            train(config)
    table = build_table(args)
    text = markdown(args.dataset, table, args.rules)
    table_path = atomic_write(out / f"{args.dataset}-table.md", lambda handle: handle.write(text))
    settings = {"experiment": "train_table", **vars(args)}
    rows = table_rows(args.dataset, table, args.micro)
    json_path = write_json(out / f"{args.dataset}-table.json",
                           make_record(settings, {"table": rows}, timed_metadata(args.device, wall, cpu)))
    print(table_path)
    print(json_path)
    print_headline("train_table", [
        (f"{args.dataset} {row['model']} {rule_name(row)}",
         f"test accuracy {estimate(row['test_accuracy'], row['test_accuracy_std'])} "
         f"(n={row['seeds']}); paper {estimate(row['paper_test_accuracy'], row['paper_test_accuracy_std'])}")
        for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("train_table", main))
