"""Redraw any figure from its data file: ``sdesam plot DATA.json [--out DIR]``.

A data file's ``settings.experiment`` names the module ``sdesam.plotting.<experiment>`` whose
``draw(data, out_stem)`` writes ``out_stem.png`` and ``out_stem.pdf``; experiments call
:func:`publish` to write their data file and draw its figure in one go, so the figure in
``figures/`` and a later redraw come from the same code and the same numbers.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from ..experiment.outputs import check_writable
from ..experiment.records import read_record, validate_record, write_json
from ..validation import InputError


def drawer(experiment: str) -> ModuleType:
    """The plotting module of ``experiment`` (it provides ``draw(data, out_stem)``)."""
    if not isinstance(experiment, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", experiment):
        raise ValueError(f"settings.experiment must be a lower-case module name; got {experiment!r}")
    try:
        module = importlib.import_module(f"{__name__}.{experiment}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{experiment}":
            raise
        raise ValueError(f"no figure is defined for experiment {experiment!r} "
                         f"(expected a module {__name__}.{experiment})") from None
    if not hasattr(module, "draw"):
        raise ValueError(f"{module.__name__} does not provide draw(data, out_stem)")
    return module


def draw(data: dict[str, Any], out_stem: str | Path) -> list[Path]:
    """Draw the figure of a loaded data file to ``out_stem.png`` / ``out_stem.pdf``."""
    try:
        experiment = data["settings"]["experiment"]
    except (KeyError, TypeError):
        raise ValueError("data must hold settings.experiment naming the experiment") from None
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    return drawer(experiment).draw(data, out_stem)


def redraw(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw the figure of the data file ``path`` into ``out_dir`` (default: beside it)."""
    path = Path(path)
    data = read_record(path)
    drawer(data["settings"]["experiment"])
    folder = Path(out_dir) if out_dir is not None else path.parent
    check_writable(folder)
    try:
        return draw(data, folder / path.stem)
    except (KeyError, TypeError, IndexError) as error:
        raise InputError(f"data file {str(path)!r} does not hold what the "
                         f"{data['settings']['experiment']} figure needs "
                         f"({type(error).__name__}: {error})") from None


def publish(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the record ``data`` (the one schema of :func:`sdesam.experiment.records.make_record`) to
    ``out_dir/<experiment>.json`` atomically and draw its figure there."""
    validate_record(data, "the record to publish")
    experiment = data["settings"]["experiment"]
    drawer(experiment)                      # fail on an unknown experiment before writing
    path = write_json(Path(out_dir) / f"{experiment}.json", data)
    return [path, *draw(data, Path(out_dir) / experiment)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sdesam plot``."""
    parser.add_argument("data", nargs="+", type=Path, help="data file(s) written by an experiment")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the figures (default: beside each data file)")


def run(args: argparse.Namespace) -> int:
    """Redraw each data file named on the command line; print the files written."""
    for path in args.data:
        for written in redraw(path, args.out):
            print(written)
    return 0
