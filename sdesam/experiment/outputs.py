"""Where runs write: a fresh folder by default, checked writable and roomy before any work.

Experiments and benchmarks never write over a committed file unless the user names the folder
(``--out figures``); without ``--out`` they write to ``runs/<name>-<UTC time>/`` and say so.
Folders are claimed atomically, so runs started at the same moment never share one: a fresh
folder is created by ``mkdir`` (which fails when another process made it first), and a named
folder a run keeps writing to is held with :func:`claimed`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..validation import InputError

RUNS_DIR = Path("runs")

DEFAULT_HEADROOM_BYTES = 16 * 2**20

CLAIM_NAME = ".claim"
"""The file in a claimed folder whose lock (``flock``) says a process is using the folder."""


def fresh_run_dir(name: str, root: str | os.PathLike = RUNS_DIR) -> Path:
    """Create and return a new folder ``root/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``,
    ``-3``... if taken); the ``mkdir`` that creates it is the claim, so two processes asking
    at the same moment get two folders."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, k = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1
            candidate = base.with_name(f"{base.name}-{k}")


@contextmanager
def claimed(folder: str | os.PathLike, argument: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` (which must exist) for this process until the block ends.

    An exclusive ``flock`` on ``folder/.claim`` taken without waiting: a second process that
    asks while the first holds it gets an :class:`InputError` naming ``argument``, the folder
    and the holder's process id. The kernel releases the lock when the holder exits, however
    it exits (SIGKILL included), so a killed run leaves no stale claim behind and can be
    resumed at once; the empty-looking ``.claim`` file stays.
    """
    folder = Path(folder)
    fd = os.open(folder / CLAIM_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{argument} {str(folder)!r} is in use by another run (process "
                             f"{holder}); wait for it to finish or choose another {argument}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)


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
            raise InputError(f"{argument} {str(folder)!r}: no space left on {device_of(folder)}") from None
        raise InputError(f"{argument} {str(folder)!r} is not writable: {error.strerror}") from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise InputError(f"{argument} {str(folder)!r}: no space left on {device_of(folder)} "
                         f"({free / 2**20:.1f} MiB free, the run needs about "
                         f"{needed_bytes / 2**20:.1f} MiB)")
    return folder


def device_of(folder: str | os.PathLike) -> str:
    """The mount point holding ``folder`` (what 'no space left on DEVICE' names)."""
    path = Path(folder).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)
