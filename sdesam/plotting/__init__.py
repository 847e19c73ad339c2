"""Redraw any figure from its data file: ``sdesam plot DATA.json [--out DIR]``.

Without ``--out`` the figures go to a fresh ``runs/plot-<time>/`` folder, like every command's
output, so a redraw never writes over the committed figures beside a data file in ``figures/``
(``--out figures`` does, when asked). A data file's ``settings.experiment`` names the module ``sdesam.plotting.<experiment>`` whose
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

from ..experiment.outputs import check_writable, resolve_out
from ..experiment.records import read_record, validate_record, write_json
from ..validation import InputError


def drawer(experiment: str) -> ModuleType:
    """The plotting module of ``experiment`` (it provides ``draw(data, out_stem)``)."""
    if not isinstance(experiment, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", experiment):
        raise InputError(f"settings.experiment must be a lower-case module name; got {experiment!r}")
    try:
        module = importlib.import_module(f"{__name__}.{experiment}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{experiment}":
            raise
        raise InputError(f"no figure is defined for experiment {experiment!r} "
                         f"(expected a module {__name__}.{experiment})") from None
    if not hasattr(module, "draw"):
        raise InputError(f"{module.__name__} does not provide draw(data, out_stem)")
    return module


def draw(data: dict[str, Any], out_stem: str | Path) -> list[Path]:
    """Draw the figure of a loaded data file to ``out_stem.png`` / ``out_stem.pdf``."""
    try:
        experiment = data["settings"]["experiment"]
    except (KeyError, TypeError):
        raise InputError("data must hold settings.experiment naming the experiment") from None
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    return drawer(experiment).draw(data, out_stem)


def load(path: str | Path) -> dict[str, Any]:
    """The record of the data file ``path`` whose figure can be drawn; one line naming the file
    when it is a folder, missing, unreadable, outside the schema or of an unknown experiment."""
    path = Path(path)
    if path.is_dir():
        example = next(iter(sorted(path.glob("*.json"))), None)
        raise InputError(f"data file {str(path)!r} is a folder; expected a data file (.json) "
                         "written by an experiment"
                         + (f", such as {str(example)!r}" if example is not None else ""))
    data = read_record(path)
    drawer(data["settings"]["experiment"])
    return data


def redraw(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw the figure of the data file ``path`` into ``out_dir`` (default: a fresh
    ``runs/plot-<time>/``), named after the data file."""
    return draw_into(path, load(path), check_writable(resolve_out(out_dir, "plot")))


def draw_into(path: str | Path, data: dict[str, Any], folder: Path) -> list[Path]:
    """Draw the loaded record ``data`` of the data file ``path`` to ``folder/<stem>.png|.pdf``;
    a record that lacks what its figure needs is one line naming the file."""
    path = Path(path)
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
                        help="folder for the figures (default: a fresh runs/plot-<time>/; "
                             "--out figures redraws the committed ones)")


def run(args: argparse.Namespace) -> int:
    """Check every data file named on the command line, then redraw each into one folder and
    print the files written."""
    records = [load(path) for path in args.data]
    stems: dict[str, Path] = {}
    for path in args.data:
        if path.stem in stems:
            raise InputError(f"data files {str(stems[path.stem])!r} and {str(path)!r} would both "
                             f"draw {path.stem}.png in one folder; redraw them separately")
        stems[path.stem] = path
    out = check_writable(resolve_out(args.out, "plot"))
    print(f"writing to {out}/")
    for path, data in zip(args.data, records):
        for written in draw_into(path, data, out):
            print(written)
    return 0
