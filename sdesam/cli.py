"""The ``sdesam`` command line: one subcommand per job, each defined in its own module.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when used, so ``sdesam derive`` does not pay for importing the trainer.
``sdesam run EXPERIMENT [flags]`` runs a script of the checkout's ``experiments/`` folder, the
same as ``python experiments/EXPERIMENT.py [flags]``.

One exit-status policy for every command (and every experiment script, through
:func:`guarded`): 0 success, 1 a check that failed (e.g. a derivation that does not verify),
2 bad input -- a one-line message naming the argument or file, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, NoReturn, Sequence

from . import __version__
from .validation import InputError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

COMMANDS: dict[str, tuple[str, str]] = {
    "derive": ("sdesam.symbolic.cli", "derive the SDE of a SAM-family rule and verify it"),
    "train": ("sdesam.train.cli", "train a network with any rule of the registry"),
    "plot": ("sdesam.plotting", "redraw a figure from its data file"),
    "run": ("sdesam.cli", "run an experiment of experiments/ (sdesam run NAME --help)"),
}

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)
"""What a negative number looks like on the command line (``-1``, ``-.5``, ``-1e-3``, ``-inf``):
taken as an option's value, so that the option's own range check can refuse it by name."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``PROG: error: ...``) and exit status 2,
    and which takes a negative number, scientific notation included, as an option's value
    (argparse's own pattern misses ``-1e-3`` and answers "expected one argument")."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with the bad-input status."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def guarded(prog: str, action: Callable[[], int | None]) -> int:
    """Run ``action`` under the exit-status policy: bad input (InputError, ValueError, a
    missing or unreadable file) becomes one line on stderr and status 2."""
    try:
        return int(action() or EXIT_OK)
    except (InputError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.filename}: {error.strerror}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def experiment_names() -> tuple[str, ...]:
    """The experiments ``sdesam run`` knows: the scripts of the checkout's experiments/ folder."""
    if not EXPERIMENTS_DIR.is_dir():
        return ()
    return tuple(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.name.startswith("_")))


def load_experiment(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` of the checkout (it provides ``main(argv) -> int``)."""
    names = experiment_names()
    if not names:
        raise InputError(f"no experiments/ folder beside the sdesam package at {EXPERIMENTS_DIR}; "
                         "sdesam run needs a source checkout (pip install -e .)")
    if name not in names:
        raise InputError(f"experiment must be one of {', '.join(names)}; got {name!r}")
    spec = importlib.util.spec_from_file_location(f"sdesam_experiment_{name}",
                                                  EXPERIMENTS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sdesam run``: the experiment's name, then its own flags."""
    names = experiment_names()
    parser.add_argument("experiment", metavar="EXPERIMENT",
                        help="one of: " + (", ".join(names) or "(no experiments/ folder)"))
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="the experiment's own flags")


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment's ``main`` with its flags; its usage and errors name it
    ``sdesam run NAME`` (argparse takes the program's name from ``sys.argv[0]``)."""
    module = load_experiment(args.experiment)
    program, sys.argv[0] = sys.argv[0], f"sdesam run {args.experiment}"
    try:
        return guarded(sys.argv[0], lambda: module.main(args.flags))
    finally:
        sys.argv[0] = program


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named in ``argv`` is imported and filled in."""
    parser = OneLineParser(
        prog="sdesam",
        description="Sharpness-aware minimization through stochastic differential equations.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdesam`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return guarded(f"sdesam {args.command}", lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
