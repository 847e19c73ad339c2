"""Run every derivation script; exit non-zero if any check fails to verify."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import m_usam  # noqa: E402
import n_usam  # noqa: E402
import rw_sam  # noqa: E402
import rw_sam_weights  # noqa: E402
import sam_variants  # noqa: E402
import usam  # noqa: E402

SCRIPTS = (n_usam, usam, m_usam, sam_variants, rw_sam_weights, rw_sam)


def main() -> int:
    """Run all scripts in turn and report which failed."""
    failed = [script.__name__ for script in SCRIPTS if script.main() != 0]
    print("all derivations verified" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
