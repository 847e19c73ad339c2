"""Atomic file writing and run metadata shared by every experiment and the trainer.

A data file is written to a temporary file in the same folder and renamed into place, so an
interrupted run never leaves a half-written file. ``run_metadata`` records what made a result:
library versions, the git commit, the machine and the time.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..validation import InputError
from .outputs import device_of


class NoSpaceError(InputError):
    """The file system filled up while a file was being written (nothing was written)."""


class _WriteErrors:
    """A file handle that remembers the OSError its ``write`` raised: writers such as
    ``torch.save`` replace it by an error of their own ("unexpected pos")."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> Any:
        """The handle's write, remembering its OSError."""
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def writelines(self, lines: Any) -> None:
        """The lines, one :meth:`write` each."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        """Everything else (flush, tell, seek, fileno...) is the handle's own."""
        return getattr(self.handle, name)


def _no_space(error: BaseException, recorded: OSError | None) -> bool:
    """Whether the file system was full: ENOSPC (or a full quota) on a write or in the chain of
    the error that ended the writing."""
    chain, seen = [recorded, error], set()
    while chain:
        item = chain.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        chain += [item.__cause__, item.__context__]
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Create ``path`` by calling ``write(file)`` on a temporary sibling, then renaming it.

    On any failure the temporary file is removed and ``path`` keeps its old content (or stays
    absent); a full file system raises :class:`NoSpaceError`, one line naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)          # mkstemp's 0600 would make every output private
    recorder = None
    try:
        with os.fdopen(fd, mode) as handle:
            recorder = _WriteErrors(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _no_space(error, recorder and recorder.error):
            kept = "its previous version is kept" if path.exists() else "it was not created"
            raise NoSpaceError(f"no space left on {device_of(path.parent)} while writing "
                               f"{str(path)!r}; {kept}") from None
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write(path, lambda f: json.dump(data, f, indent=1, default=to_jsonable))


def to_jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays that ``json`` does not know (``json``'s
    ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


_to_jsonable = to_jsonable     # the name it had while private


def git_commit() -> str | None:
    """The commit of the sdesam checkout (with ``-dirty`` when it has local changes), if any."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def run_metadata(device: str | None = None) -> dict[str, Any]:
    """Versions, git commit, machine, load and UTC time, for the ``metadata`` of a data file."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch

    from .. import __version__

    versions = {"python": platform.python_version(), "numpy": numpy.__version__,
                "torch": torch.__version__}
    for name in ("sympy", "scipy", "torchsde", "matplotlib"):
        try:    # the installed version, read without importing the library (a task's worker
            versions[name] = version(name)      # would pay a second for sympy and matplotlib)
        except PackageNotFoundError:  # an optional library that is absent is simply not recorded
            pass
    versions["sdesam"] = __version__
    machine = {"platform": platform.platform(), "processor": platform.machine(),
               "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return {"versions": versions, "git_commit": git_commit(), "machine": machine,
            "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------- the one schema
RECORD_KEYS: tuple[str, ...] = ("settings", "metadata", "results")
"""Every experiment's data file is ``{"settings": ..., "metadata": ..., "results": ...}``.

``settings``: what the user asked for (``settings["experiment"]`` names the experiment and its
plotting module), never values computed by the run; ``metadata``: :func:`run_metadata` plus
the wall/CPU time; ``results``: a map from table name to a list of records (flat dicts), one
name per quantity across experiments (``trace_V``, ``*_stderr``, ``micro`` null where a rule
has no micro-batches, ``chains`` / ``diverged`` where a statistic is taken over chains).
"""


def make_record(settings: dict[str, Any], results: dict[str, list[dict[str, Any]]],
                metadata: dict[str, Any]) -> dict[str, Any]:
    """An experiment's data file in the one schema (validated before it is returned)."""
    data = {"settings": settings, "metadata": metadata, "results": results}
    validate_record(data, "<new record>")
    return data


def merge_tables(parts: list[dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """The results of several protocols of one experiment as one map: same-named tables joined."""
    results: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for table, rows in part.items():
            results.setdefault(table, []).extend(rows)
    return results


def validate_record(data: Any, source: str | os.PathLike) -> dict[str, Any]:
    """``data`` if it follows the schema of :data:`RECORD_KEYS`, else a ValueError naming ``source``."""
    where = str(source)
    if not isinstance(data, dict) or set(data) != set(RECORD_KEYS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{where}: an experiment record must have exactly the keys "
                         f"{', '.join(RECORD_KEYS)}; got {keys}")
    if not isinstance(data["settings"], dict) or not isinstance(data["settings"].get("experiment"), str):
        raise InputError(f"{where}: settings must be a map with a string 'experiment'")
    if not isinstance(data["metadata"], dict):
        raise InputError(f"{where}: metadata must be a map")
    results = data["results"]
    if not isinstance(results, dict):
        raise InputError(f"{where}: results must map table names to lists of records")
    for table, rows in results.items():
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise InputError(f"{where}: results[{table!r}] must be a list of records (maps)")
        for row in rows:
            micro = row.get("micro")
            if micro is not None and (not isinstance(micro, int) or isinstance(micro, bool)):
                raise InputError(f"{where}: results[{table!r}] has micro={micro!r}; "
                                 "micro must be an integer or null")
    return data


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate an experiment record; every failure names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"data file {str(path)!r} cannot be read: {error}") from None
    if not text.strip():
        raise InputError(f"data file {str(path)!r} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"data file {str(path)!r} is not valid JSON "
                         f"(line {error.lineno}, column {error.colno}: {error.msg}); "
                         "it may be truncated") from None
    return validate_record(data, path)


def timed_metadata(device: str | None, wall_start: float, cpu_start: float) -> dict[str, Any]:
    """:func:`run_metadata` plus the wall and process CPU seconds since ``wall_start``
    (``time.perf_counter()``) and ``cpu_start`` (``time.process_time()``): a record's metadata."""
    import time

    return {**run_metadata(device), "wall_time_s": time.perf_counter() - wall_start,
            "cpu_time_s": time.process_time() - cpu_start}


def without_fields(value: Any, names: tuple[str, ...]) -> Any:
    """``value`` (maps and lists, at any depth) without the map entries named in ``names``:
    e.g. a record's timings, which differ from run to run, before comparing records."""
    if isinstance(value, dict):
        return {k: without_fields(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [without_fields(v, names) for v in value]
    return value
