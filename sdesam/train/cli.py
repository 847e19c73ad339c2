"""Train a classifier with any SAM-family rule (SGD, SAM, USAM, n-SAM, m-SAM, RW-SAM, ...).

Writes OUT/config.json (settings, where the data came from -- MNIST-1D's generator arguments
and checksum, the flipped labels under --label-noise --, versions, machine), OUT/metrics.jsonl
(one JSON object per epoch: epoch, train_loss, train_acc, val_loss/val_acc with
--val-fraction (and val_clean_loss/val_clean_acc with --noisy-validation), test_loss, test_acc,
lr, step_time_s, images_per_s and, with --trace-every, trace_V) and OUT/checkpoint.pt (each
epoch, atomically). An OUT that already holds a run is refused unless --resume (continue it
exactly) or --overwrite (start afresh) is given, and so is an OUT another sdesam train is using.

Exit status: 0 done; 1 training diverged (a non-finite training loss or parameters: the run
stops, config.json records where, the last checkpoint is kept); 2 bad input, or no room left
for the checkpoint; 130 interrupted (Ctrl-C): one line gives the last checkpoint and the exact
command that continues the run.

Data sets: CIFAR-10/100 from local files, a synthetic CIFAR-shaped set, MNIST-1D (generated
locally by the mnist1d package from its templates, cached under --data-dir, default
~/.cache/sdesam or $SDESAM_DATA) and scikit-learn's 8x8 digits (fixed stratified test split).
--val-fraction carves a stratified validation split from the training data and --label-noise
flips that fraction of the remaining training labels (both drawn from --data-seed).

The defaults (SGD momentum 0.9, lr 0.1, cosine schedule, 200 epochs, batch 256, weight decay
5e-4, rho 0.05 for CIFAR-10 / 0.1 for CIFAR-100, random crop with padding 4 + horizontal flip)
follow the CIFAR set-up of the first author's previous SAM paper (Eigen-SAM, NeurIPS 2024):
the set-up of "Unveiling m-Sharpness" itself is not known. RW-SAM's lam and delta defaults are
not from the paper either; tune them.

Data-parallel: torchrun --nproc_per_node K -m sdesam.train ... (--batch is the global
batch, split equally over the K processes).

examples:
  sdesam train --dataset mnist1d --model cnn1d --rule sam --batch 32 --epochs 10 --out runs/m1d
      (about 90% test accuracy; 11 s with OMP_NUM_THREADS=1 on a 2-core machine)
  sdesam train --dataset digits --rule m-sam --micro 4 --batch 32 --lr 0.05 \\
      --label-noise 0.4 --val-fraction 0.2 --epochs 30 --out runs/digits-msam
  sdesam train --dataset synthetic --model small --rule rw-sam --epochs 1 --out runs/demo
  sdesam train --dataset cifar10 --data-dir ~/data --model resnet18 --rule m-sam \\
      --micro 32 --device cuda --out runs/r18-msam
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields

from sdesam.algorithms import get_rule
from sdesam.train.data import DATASETS, FILE_DATASETS, find_cifar_folder
from sdesam.experiment.records import NoSpaceError
from sdesam.optim import DEFAULT_DELTA, DEFAULT_LAM, optimizer_names
from sdesam.train.loop import BN_POLICIES, PRECISIONS, Interrupted, TrainConfig, TrainResult, train
from sdesam.train.models import MODELS, NORMS
from sdesam.train.schedule import SCHEDULES
from sdesam.validation import InputError

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name != "out"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sdesam train`` flags to ``parser`` (defaults are TrainConfig's)."""
    d = _DEFAULTS
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.pt when it exists (same settings)")
    run.add_argument("--overwrite", action="store_true",
                     help="start afresh in an OUT that already holds a run (its files are replaced)")
    run.add_argument("--seed", type=int, default=d["seed"], help="random seed (default %(default)s)")
    run.add_argument("--device", default=d["device"], help="cpu, cuda or cuda:N (default %(default)s)")
    run.add_argument("--precision", choices=PRECISIONS, default=d["precision"],
                     help="autocast precision; auto = bf16 on CUDA, fp32 on CPU (default %(default)s)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar or per-epoch console line")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=d["dataset"],
                      help="default %(default)s (a built-in CIFAR-shaped set)")
    data.add_argument("--data-dir", default=None,
                      help="CIFAR: folder with the official python-batch files (never downloaded); "
                           "mnist1d: cache folder of the generated set")
    data.add_argument("--val-fraction", type=float, default=d["val_fraction"],
                      help="stratified fraction of the training data held out for validation "
                           "(default %(default)s)")
    data.add_argument("--label-noise", type=float, default=d["label_noise"],
                      help="fraction of training labels replaced by another class, symmetric "
                           "(default %(default)s)")
    data.add_argument("--data-seed", type=int, default=d["data_seed"],
                      help="seed of the validation split and the label noise (default %(default)s)")
    data.add_argument("--noisy-validation", action="store_true",
                      help="put the label noise on the validation labels too (as a practitioner's "
                           "are); metrics then hold val_acc on the noisy labels and val_clean_acc "
                           "on the true ones")
    data.add_argument("--synthetic-train", type=int, default=d["synthetic_train"],
                      help="synthetic training images (default %(default)s)")
    data.add_argument("--synthetic-test", type=int, default=d["synthetic_test"],
                      help="synthetic test images (default %(default)s)")
    data.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                      help="no random crop / flip (the default for mnist1d and digits)")
    data.add_argument("--padding", type=int, default=d["padding"],
                      help="random-crop padding in pixels (default %(default)s)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, default=None,
                       help="default: cnn1d for mnist1d, mlp1d for digits, small otherwise")
    model.add_argument("--norm", choices=NORMS, default=None,
                       help="normalisation layers (default: bn for the ResNets/WRN, none for the "
                            "others)")
    model.add_argument("--pretrained", default=None,
                       help="local ViT weights file (required for --model vit)")

    opt = parser.add_argument_group("optimizer")
    opt.add_argument("--rule", "--optimizer", dest="optimizer", choices=optimizer_names(),
                     default=d["optimizer"], metavar="RULE",
                     help="the update rule, one of the registry's: "
                     + "; ".join(f"{name}: {get_rule(name).description}" for name in optimizer_names())
                     .replace("%", "%%") + " (default %(default)s)")
    opt.add_argument("--rho", type=float, default=None,
                     help="rules that perturb: perturbation radius (default 0.05; 0.1 for cifar100)")
    opt.add_argument("--micro", type=int, default=None,
                     help="m-rules: micro-batch size m (divides the per-device batch)")
    opt.add_argument("--lam", type=float, default=None,
                     help=f"reweighted rules: inverse temperature of the Gibbs weights "
                          f"(default {DEFAULT_LAM:g})")
    opt.add_argument("--delta", type=float, default=None,
                     help=f"reweighted rules: finite-difference step (default {DEFAULT_DELTA:g}); "
                          "a rule keyword the chosen rule does not take is refused")
    opt.add_argument("--local-perturbation", action="store_true",
                     help="RW-SAM under DDP: perturb each device along its own gradient")
    opt.add_argument("--bn", choices=BN_POLICIES, default=d["bn"],
                     help="BatchNorm running statistics: updated once per step by the first "
                          "pass, or frozen (default %(default)s)")
    opt.add_argument("--lr", type=float, default=d["lr"], help="base learning rate (default %(default)s)")
    opt.add_argument("--momentum", type=float, default=d["momentum"], help="default %(default)s")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    opt.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                     help="default %(default)s")
    opt.add_argument("--accumulate", type=int, default=d["accumulate"],
                     help="gradient-accumulation chunks per step (default %(default)s)")

    sched = parser.add_argument_group("schedule")
    sched.add_argument("--epochs", type=int, default=d["epochs"], help="default %(default)s")
    sched.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=d["batch_size"],
                       help="global batch size (default %(default)s)")
    sched.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"],
                       help="learning-rate schedule (default %(default)s)")
    sched.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"],
                       help="linear warm-up length (default %(default)s)")
    sched.add_argument("--milestones", type=int, nargs="*", default=list(d["milestones"]),
                       help="epochs at which the step schedule multiplies lr by --gamma")
    sched.add_argument("--gamma", type=float, default=d["gamma"],
                       help="step-schedule factor (default %(default)s)")
    sched.add_argument("--label-smoothing", type=float, default=d["label_smoothing"],
                       help="default %(default)s")

    measure = parser.add_argument_group("measurements")
    measure.add_argument("--eval-batch", "--eval-batch-size", dest="eval_batch_size", type=int, default=d["eval_batch_size"],
                         help="default %(default)s")
    measure.add_argument("--trace-every", type=int, default=d["trace_every"],
                         help="measure tr V on a fixed probe batch every N epochs (0: never)")
    measure.add_argument("--probe-size", type=int, default=d["probe_size"],
                         help="probe batch size for tr V (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["milestones"] = tuple(values.get("milestones") or ())
    return TrainConfig(**values)


EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 130
"""Exit statuses of a run that diverged (a failed check) and of one stopped by Ctrl-C (128 + SIGINT)."""


def _say(message: str) -> None:
    """Print one line on standard error (from the first process only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"sdesam train: {message}", file=sys.stderr)


def _refuse(error: Exception) -> int:
    """Print the one-line error and return exit status 2."""
    _say(f"error: {error}")
    return 2


def resume_command(args: argparse.Namespace) -> str:
    """The ``sdesam train`` command that continues the run ``args`` describe: each flag whose
    value differs from its default, then ``--resume`` (``--overwrite`` left out)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    words = ["sdesam", "train"]
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if action.dest in ("resume", "overwrite") or value == action.default:
            continue
        words.append(action.option_strings[0])
        if action.nargs != 0:
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return shlex.join([*words, "--resume"])


def _diverged(result: TrainResult) -> int:
    """Say where training diverged and what was kept; return exit status 1."""
    where = result.diverged
    kept = (f"the last checkpoint, {result.out / 'checkpoint.pt'}, holds epoch "
            f"{len(result.metrics)}" if result.metrics else "no checkpoint was written")
    _say(f"diverged at epoch {where['epoch']}, step {where['step']}: {where['reason']}; stopped "
         f"(recorded in {result.out / 'config.json'}; {kept})")
    return EXIT_DIVERGED


def run(args: argparse.Namespace) -> int:
    """Check the settings (exit status 2 with a message when one is wrong), then train: 0 done,
    1 diverged, 2 bad input or a full disk, 130 interrupted (each with its one line)."""
    config = config_from_args(args)
    try:
        config.validate(int(os.environ.get("WORLD_SIZE", "1")))
        if config.dataset in FILE_DATASETS:
            find_cifar_folder(config.dataset, config.data_dir)
    except ValueError as error:
        return _refuse(error)
    try:
        result = train(config)
    except NoSpaceError as error:
        return _refuse(f"{error}; free some space, then continue with: {resume_command(args)}")
    except InputError as error:  # an out folder that holds a run or is in use, a damaged file
        return _refuse(error)
    except Interrupted as stop:
        where = ("no checkpoint was written yet" if stop.checkpoint is None else
                 f"the last checkpoint is {stop.checkpoint}"
                 + ("" if stop.epoch is None else f" (epoch {stop.epoch})"))
        _say(f"interrupted; {where}; continue with: {resume_command(args)}")
        return EXIT_INTERRUPTED
    print(result.data)
    if result.diverged is not None:
        return _diverged(result)
    if result.metrics:
        last = result.metrics[-1]
        print(f"done: epoch {last['epoch']}, test accuracy {last['test_acc']:.2f}%, "
              f"files in {result.out}")
    return 0
