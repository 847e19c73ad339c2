"""Command-line options every theory experiment shares (quick mode, seed, output, device)."""

from __future__ import annotations

import argparse

import torch


def experiment_parser(description: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A parser with --quick, --seed, --out, --device, --cache and --no-progress."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="figures", help="folder for the data file and figure")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cache", default=None,
                        help="folder for the cached poor-minimum weights (default: OUT/cache)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def check_device(device: str) -> None:
    """Refuse a CUDA device before any work when CUDA is not available."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
