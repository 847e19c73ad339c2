"""Load a script of the repository (an experiment or a benchmark) as a module, for its tests.

The scripts are not part of the package, so their tests import them from their file. The
module is registered in ``sys.modules`` under its name while it runs, as dataclasses defined
in a script look their module up there.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """A fresh module executed from ``ROOT / relative_path`` (name: the file's stem)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
