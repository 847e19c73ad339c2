"""``python -m sdesam.plotting DATA.json [--out DIR]``: redraw figures from data files, with
``sdesam plot``'s arguments and exit-status policy."""

import sys

from ..cli import OneLineParser, guarded
from . import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and redraw; 2 with one line on bad input."""
    parser = OneLineParser(prog="python -m sdesam.plotting", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
