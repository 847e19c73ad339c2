"""Run every derivation script; exit 1 if any check fails to verify.

``python derivations/run_all.py [--out DIR]``: the LaTeX of every result goes to DIR (default:
a fresh ``runs/derivations-<time>/``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import m_usam  # noqa: E402
import n_usam  # noqa: E402
import rw_sam  # noqa: E402
import rw_sam_weights  # noqa: E402
import sam_variants  # noqa: E402
import usam  # noqa: E402
from sdesam.symbolic.report import run_script  # noqa: E402

SCRIPTS = (n_usam, usam, m_usam, sam_variants, rw_sam_weights, rw_sam)


def main(out: Path) -> int:
    """Run all scripts in turn, writing into ``out``, and report which failed."""
    failed = [script.__name__ for script in SCRIPTS if script.main(out) != 0]
    print("all derivations verified" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)
