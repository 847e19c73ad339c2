"""Where runs write: a fresh folder by default, checked writable and roomy before any work.

Experiments and benchmarks never write over a committed file unless the user names the folder
(``--out figures``); without ``--out`` they write to ``runs/<name>-<UTC time>/`` and say so.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import tempfile
from pathlib import Path

from ..validation import InputError

RUNS_DIR = Path("runs")

DEFAULT_HEADROOM_BYTES = 16 * 2**20


def fresh_run_dir(name: str, root: str | os.PathLike = RUNS_DIR) -> Path:
    """A new folder ``root/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3``... if taken)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def resolve_out(out: str | os.PathLike | None, name: str) -> Path:
    """``out`` when the user named one, else a fresh run folder for ``name``."""
    return Path(out) if out is not None else fresh_run_dir(name)


def check_writable(folder: str | os.PathLike, needed_bytes: int = DEFAULT_HEADROOM_BYTES,
                   argument: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it takes a file and has ``needed_bytes`` free.

    Raises an :class:`InputError` naming ``argument`` and the folder: not a folder, not
    writable, or "no space left on DEVICE" with what is free and what the run needs.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{argument} {str(folder)!r} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise InputError(f"{argument} {str(folder)!r}: no space left on {_device_of(folder)}") from None
        raise InputError(f"{argument} {str(folder)!r} is not writable: {error.strerror}") from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise InputError(f"{argument} {str(folder)!r}: no space left on {_device_of(folder)} "
                         f"({free / 2**20:.1f} MiB free, the run needs about "
                         f"{needed_bytes / 2**20:.1f} MiB)")
    return folder


def _device_of(folder: Path) -> str:
    """The mount point holding ``folder`` (what 'no space left on DEVICE' names)."""
    path = folder.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)
