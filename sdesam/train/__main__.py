"""``python -m sdesam.train ...`` and ``torchrun --nproc_per_node K -m sdesam.train ...``."""

import argparse
import sys

from sdesam.train import cli


def main(argv: list[str] | None = None) -> int:
    """Parse the ``sdesam train`` flags and run."""
    parser = argparse.ArgumentParser(prog="python -m sdesam.train", description=cli.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
