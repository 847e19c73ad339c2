"""The ``sdesam`` command line: one subcommand per job, each defined in its own module.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when used, so ``sdesam derive`` does not pay for importing the trainer.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "derive": ("sdesam.symbolic.cli", "derive the SDE of a SAM-family rule and verify it"),
    "train": ("sdesam.train.cli", "train a network with SGD, SAM, USAM, m-SAM or RW-SAM"),
    "plot": ("sdesam.plotting", "redraw a figure from its data file"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named in ``argv`` is imported and filled in."""
    parser = argparse.ArgumentParser(
        prog="sdesam",
        description="Sharpness-aware minimization through stochastic differential equations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
