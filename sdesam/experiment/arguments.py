"""Command-line options every experiment shares, and where it writes.

``--quick``, ``--seed``, ``--out``, ``--device``, ``--cache`` and ``--no-progress`` mean the same
in every experiment that takes them. Without ``--out`` a run goes to a fresh ``runs/<experiment>-<time>/``
folder (:mod:`sdesam.experiment.outputs`), so nothing committed is overwritten unless the user names
``--out figures``; the folder is checked writable before any work.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .. import validation
from ..cli import OneLineParser
from .outputs import check_writable, resolve_out

QUICK_ENV = "SDESAM_QUICK"
"""Environment variable that makes every experiment run at its quick size (the README test)."""


def bare_parser(description: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A one-line-error parser with ``--quick`` (on by default when SDESAM_QUICK=1), for
    experiments whose other flags differ from :func:`experiment_parser`'s."""
    parser = OneLineParser(description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help + " (also set by SDESAM_QUICK=1)",
                        default=os.environ.get(QUICK_ENV) == "1")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of this process (default 1: these problems are "
                             "too small to gain from more, and on a shared CPU two threads ran up "
                             "to 45x slower); a sweep's tasks run on one thread each, in parallel "
                             "over --jobs")
    return parser


def experiment_parser(description: str | None, quick_help: str, *,
                      cache: bool = True) -> argparse.ArgumentParser:
    """A parser with --quick, --seed, --out, --device, --no-progress and, for experiments that
    reach the digits poor minimum (``cache``), --cache."""
    parser = bare_parser(description, quick_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="folder for the data file and figure (default: a fresh "
                             "runs/<experiment>-<time>/; --out figures regenerates the committed ones)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    if cache:
        parser.add_argument("--cache", default=None,
                            help="folder for the cached poor-minimum weights (default: "
                                 "runs/cache); checked writable before any work")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def prepare_out(args: argparse.Namespace, experiment: str, needed_bytes: int = 16 * 2**20) -> Path:
    """Check ``--device`` and ``--seed``, set ``--threads``, resolve ``--out`` (fresh run folder by
    default), prove it writable with room for ``needed_bytes``, store it back in ``args.out``
    and say where output goes."""
    check_device(args.device)
    if getattr(args, "seed", None) is not None:
        validation.seed("--seed", args.seed)
    torch.set_num_threads(validation.positive_int("--threads", getattr(args, "threads", 1)))
    out = check_writable(resolve_out(args.out, experiment), needed_bytes)
    args.out = str(out)
    print(f"writing to {out}/", flush=True)
    return out


def check_device(device: str) -> None:
    """Refuse a CUDA device before any work when CUDA is not available."""
    validation.device("--device", device)
