"""``python -m sdesam.plotting DATA.json [--out DIR]``: redraw figures from data files."""

import argparse
import sys

from . import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m sdesam.plotting", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
