"""A sweep as a list of independent tasks, each writing its own record, run by any Executor.

A :class:`Task` is a module-level function and its settings (JSON). Its identity is the
SHA-256 of the canonical JSON of its settings and the sweep seed; its seed is derived from
that identity, never from where it sits in the list or when it was submitted. The function is
called as ``function(settings, seed)`` and returns ``results`` (table name -> list of flat
records); :func:`execute` wraps them in the one record schema (``settings``, ``metadata``:
where and when it ran, ``results``) and writes ``<records_dir>/<key[:16]>.json`` atomically.

:func:`run_tasks` skips a task whose record exists (a killed sweep resumes where it stopped),
sends the others to a ``concurrent.futures.Executor`` (:mod:`sdesam.experiment.executor`),
counts finished tasks, and on the first failure cancels what has not started, lets what is
running finish (its record is kept) and raises an error that names the task and its settings.
Every task runs with one torch thread and the global random generators (torch, numpy,
``random``) seeded from its seed, so its results do not depend on where it ran.

Large chain counts split into blocks (:func:`chain_blocks`, :func:`block_tasks`), each a task
with its own seed; their moments are pooled with :func:`pool_moments`.

Two things a task may need beyond its settings: ``shared_seed_over`` names settings its seed
does not depend on, so tasks that differ only there share a seed (common random numbers: every
rule of a paired comparison sees the same batches); ``paths`` names folders it reads or writes
besides its record (a cache, trainer run folders), handed to it among its settings but kept
out of its identity, so a task is the same wherever those folders are.

A task travels to a worker by the name of its function's module, or, for a script (an
experiment run as ``python experiments/X.py``, loaded by ``sdesam run X`` or by a test), by its
file, which the worker loads once (from the same path, else from its own checkout's
``experiments/`` folder).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import torch

from ..progress import progress_bar
from ..simulation.chains import Moments
from ..validation import InputError
from .records import atomic_write, make_record, read_record, run_metadata, to_jsonable

TaskFunction = Callable[[dict[str, Any], int], dict[str, list[dict[str, Any]]]]
"""``function(settings, seed) -> results``: a task's work, a pure function of its arguments."""

SWEEP_SEED = "sweep_seed"
"""The setting under which a record keeps the sweep seed its task's seed was derived from."""

SEED_BITS = 40
"""The size of a task's seed: the library derives seeds from seeds by arithmetic (the Brownian
path's ``seed * 1_000_003 + k``, the trainer's ``(seed * 1_000_003 + epoch) * 7 + stream``), which
must stay within torch's 64-bit seeds; 40 bits leave room and make two of 10^4 tasks share a
seed with probability below 10^-4."""

SHARED_SEED = "seed_shared_over"
"""The setting under which a record keeps the settings its task's seed does not depend on
(present only when there are some)."""


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: equal for equal values, whatever their order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=to_jsonable)


@dataclass(frozen=True)
class Task:
    """One independent unit of a sweep: ``function(settings, seed)`` with a seed derived from
    the settings and ``sweep_seed``; ``name`` only labels it in progress and errors.

    ``shared_seed_over``: settings the seed does not depend on (tasks differing only there
    share a seed); ``paths``: folders given to the function among its settings, outside the
    task's identity (see the module doc)."""

    function: TaskFunction
    settings: dict[str, Any]
    sweep_seed: int = 0
    name: str = field(default="", compare=False)
    shared_seed_over: tuple[str, ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        qualname = getattr(self.function, "__qualname__", "")
        if not callable(self.function) or "<" in qualname or not getattr(self.function, "__module__", None):
            raise InputError(f"task function must be a module-level function (picklable); "
                             f"got {self.function!r}")
        if not isinstance(self.settings, Mapping):
            raise InputError(f"task settings must be a map; got {type(self.settings).__name__}")
        try:
            settings = json.loads(canonical_json(dict(self.settings)))
        except (TypeError, ValueError) as error:
            raise InputError(f"task settings must be JSON (finite numbers, strings, lists, "
                             f"maps); {error}") from None
        if not isinstance(settings.get("experiment"), str):
            raise InputError(f"task settings must name their 'experiment' (a string); "
                             f"got {canonical_json(settings)}")
        if SWEEP_SEED in settings:
            raise InputError(f"task settings may not use the name {SWEEP_SEED!r}: the record "
                             "keeps the sweep seed there")
        if SHARED_SEED in settings:
            raise InputError(f"task settings may not use the name {SHARED_SEED!r}: the record "
                             "keeps the settings its seed is shared over there")
        if not isinstance(self.sweep_seed, int) or isinstance(self.sweep_seed, bool):
            raise InputError(f"sweep_seed must be an integer; got {self.sweep_seed!r}")
        shared = tuple(sorted(set(self.shared_seed_over)))
        missing = [name for name in shared if name not in settings or name == "experiment"]
        if missing:
            raise InputError(f"shared_seed_over must name settings of the task other than "
                             f"'experiment'; got {missing} (settings: {sorted(settings)})")
        paths = dict(self.paths)
        clashes = [name for name in paths if name in settings or not isinstance(paths[name], str)]
        if clashes:
            raise InputError(f"task paths must be strings under names its settings do not use; "
                             f"got {clashes}")
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "shared_seed_over", shared)
        object.__setattr__(self, "paths", paths)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the function by a reference a worker can resolve, scripts included."""
        return (_rebuild_task, (_function_reference(self.function), self.settings,
                                self.sweep_seed, self.name, self.shared_seed_over, dict(self.paths)))

    @property
    def record_settings(self) -> dict[str, Any]:
        """The settings its record keeps: the task's settings, the sweep seed and, when there
        are some, the settings its seed is shared over."""
        shared = {SHARED_SEED: list(self.shared_seed_over)} if self.shared_seed_over else {}
        return {**self.settings, SWEEP_SEED: self.sweep_seed, **shared}

    @cached_property
    def key(self) -> str:
        """The task's identity: SHA-256 (hex) of the canonical JSON of its record settings."""
        return hashlib.sha256(canonical_json(self.record_settings).encode()).hexdigest()

    @property
    def seed(self) -> int:
        """The task's own seed (:data:`SEED_BITS` bits), a function of its identity only: of
        its settings but those of ``shared_seed_over``, and of the sweep seed."""
        if not self.shared_seed_over:
            return int(self.key[:SEED_BITS // 4], 16)
        kept = {k: v for k, v in self.record_settings.items()
                if k not in self.shared_seed_over and k != SHARED_SEED}
        return int(hashlib.sha256(canonical_json(kept).encode()).hexdigest()[:SEED_BITS // 4], 16)

    @property
    def label(self) -> str:
        """How progress and errors name the task: ``name``, else the start of its key."""
        return self.name or self.key[:12]


def record_path(records_dir: str | os.PathLike, task: Task) -> Path:
    """Where ``task`` writes its record in ``records_dir``."""
    return Path(records_dir) / f"{task.key[:16]}.json"


def _is_script(module_name: str) -> bool:
    """Whether a module cannot be imported by its name (``__main__``, or a file loaded under
    a name no folder of ``sys.path`` provides)."""
    if module_name == "__main__":
        return True
    if "." in module_name:
        return False
    return importlib.machinery.PathFinder.find_spec(module_name, sys.path) is None


def _function_reference(function: TaskFunction) -> tuple[str, str | None, str]:
    """(module name, the module's file if it is a script, qualified name) of ``function``."""
    name = function.__module__
    file = getattr(sys.modules.get(name), "__file__", None)
    script = file is not None and _is_script(name)
    return name, str(Path(file).resolve()) if script else None, function.__qualname__


def _same_file(module: ModuleType | None, file: str) -> bool:
    """Whether ``module`` was loaded from ``file``."""
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve() == Path(file)


def _load_script(name: str, file: str) -> ModuleType:
    """The module of the script ``file``, loaded once per process under ``name`` (a script run
    as ``__main__`` under ``sdesam_script_<stem>``); from this checkout's ``experiments/``
    folder when ``file`` is not on this machine."""
    path = Path(file)
    if not path.is_file():
        from ..cli import EXPERIMENTS_DIR

        path = EXPERIMENTS_DIR / path.name
        if not path.is_file():
            raise ImportError(f"the task's script {file} is not on this machine (nor "
                              f"{path}): workers need the same checkout of sdesam")
    alias = f"sdesam_script_{path.stem}" if name == "__main__" else name
    loaded = sys.modules.get(alias)
    if _same_file(loaded, str(path.resolve())):
        return loaded
    spec = importlib.util.spec_from_file_location(alias, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module         # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[alias]
        raise
    return module


def _resolve_function(reference: tuple[str, str | None, str]) -> TaskFunction:
    """The function a :func:`_function_reference` names, importing or loading its module."""
    name, file, qualname = reference
    if file is None:
        module = importlib.import_module(name)
    else:
        module = sys.modules.get(name)
        if not _same_file(module, file):
            module = _load_script(name, file)
    function: Any = module
    for part in qualname.split("."):
        function = getattr(function, part)
    return function


def _rebuild_task(reference: tuple[str, str | None, str], settings: dict[str, Any],
                  sweep_seed: int, name: str, shared_seed_over: tuple[str, ...],
                  paths: dict[str, str]) -> Task:
    """A pickled :class:`Task`, with its function resolved in this process."""
    return Task(_resolve_function(reference), settings, sweep_seed, name=name,
                shared_seed_over=shared_seed_over, paths=paths)


@contextmanager
def seeded_global_generators(seed: int) -> Iterator[None]:
    """The global random generators of torch (CPU), numpy and ``random`` seeded from ``seed``
    for the block, and restored after it: code that draws from them without a generator of
    its own (e.g. RW-SAM's Rademacher directions) sees the same numbers wherever a task runs,
    and a task run in this process leaves the caller's streams as they were. Python's
    ``random`` is seeded too, but in a Dask worker its event loop draws from that stream while a
    task runs (tornado's callback jitter), so no sdesam code that runs as a task uses it."""
    import random

    import numpy

    numpy_state, python_state = numpy.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            numpy.random.seed(seed % 2**32)
            random.seed(seed)
            yield
    finally:
        numpy.random.set_state(numpy_state)
        random.setstate(python_state)


_ONE_TASK_AT_A_TIME = threading.RLock()
"""Held while a task runs: the torch thread count and the global generators belong to the
process, so a worker that runs tasks in several threads (a Dask worker started with
``--nthreads`` above 1) runs them one after another rather than let them race."""


def execute(task: Task, path: str) -> str:
    """Run ``task`` with one torch thread and the global generators seeded from its seed (one
    task at a time per process), write its record to ``path`` atomically (where this worker
    can) and return the record as JSON text."""
    with _ONE_TASK_AT_A_TIME:
        wall, cpu = time.perf_counter(), time.process_time()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with seeded_global_generators(task.seed):
                results = task.function({**json.loads(canonical_json(task.settings)),
                                         **task.paths}, task.seed)
        finally:
            torch.set_num_threads(threads)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metadata = {**run_metadata(), "host": socket.gethostname(), "pid": os.getpid(),
                "task": {"key": task.key, "seed": task.seed, "paths": dict(task.paths),
                         "function": f"{task.function.__module__}.{task.function.__qualname__}"},
                "wall_time_s": wall, "cpu_time_s": cpu}
    record = make_record(task.record_settings, results, metadata)
    text = json.dumps(record, indent=1, default=to_jsonable)
    try:
        atomic_write(path, lambda handle: handle.write(text))
    except OSError:
        pass    # a worker that cannot reach the folder (no shared disk): the caller writes it
    return text


def _existing_record(path: Path, task: Task) -> dict[str, Any]:
    """The record at ``path`` if it is ``task``'s, else an InputError naming the file."""
    record = read_record(path)
    if canonical_json(record["settings"]) != canonical_json(task.record_settings):
        raise InputError(f"record {str(path)!r} holds other settings than task {task.label} "
                         f"({canonical_json(task.record_settings)}); remove it or use another folder")
    return record


def _keep(text: str, path: Path) -> dict[str, Any]:
    """The record ``text`` a task returned, written to ``path`` if its worker could not."""
    if not path.exists():
        atomic_write(path, lambda handle: handle.write(text))
    return json.loads(text)


class TaskError(RuntimeError):
    """A task of a sweep failed; the message names it and its settings."""


def _one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line."""
    return f"{type(error).__name__}: " + " ".join(str(error).split())


def run_tasks(tasks: Iterable[Task], executor: Executor, records_dir: str | os.PathLike, *,
              progress: bool = True, desc: str = "tasks") -> list[dict[str, Any]]:
    """The records of ``tasks``, in task order: read where they exist, else run on ``executor``.

    On the first failure nothing more is started, what runs finishes (records kept), and a
    :class:`TaskError` (an :class:`InputError` when the task refused its settings) names the
    task and its settings.
    """
    tasks = list(tasks)
    for task in tasks:
        if not isinstance(task, Task):
            raise InputError(f"run_tasks takes Task objects; got {type(task).__name__}")
    seen: dict[str, Task] = {}
    for task in tasks:
        if task.key in seen:
            raise InputError(f"two tasks have the same settings {canonical_json(task.settings)} "
                             f"({seen[task.key].label}, {task.label}): each task needs its own")
        seen[task.key] = task
    folder = Path(records_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any] | None] = [None] * len(tasks)
    pending = []
    for index, task in enumerate(tasks):
        path = record_path(folder, task)
        if path.exists():
            records[index] = _existing_record(path, task)
        else:
            pending.append(index)
    futures: dict[Future, int] = {}
    failure: tuple[int, BaseException] | None = None
    with progress_bar(total=len(tasks), initial=len(tasks) - len(pending), desc=desc,
                      show=progress, unit="task") as bar:

        def collect(future: Future) -> None:
            """Keep a finished task's record, or note the first failure."""
            nonlocal failure
            index = futures[future]
            error = None if future.cancelled() else future.exception()
            if error is not None:
                failure = failure or (index, error)
            elif not future.cancelled():
                records[index] = _keep(future.result(), record_path(folder, tasks[index]))
                bar.update(1)

        try:
            remaining = set()
            for index in pending:
                future = executor.submit(execute, tasks[index], str(record_path(folder, tasks[index])))
                futures[future] = index
                if not future.done():
                    remaining.add(future)
                    continue
                collect(future)     # an in-process executor ran it on submit
                if failure is not None:
                    break           # start nothing more, as a loop would
            while remaining:
                if failure is not None:    # start nothing more; wait only for what runs
                    remaining = {future for future in remaining if not future.cancel()}
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    collect(future)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    if failure is not None:
        index, error = failure
        task = tasks[index]
        kept = sum(record is not None for record in records)
        message = (f"task {task.label} failed ({_one_line(error)}); settings "
                   f"{canonical_json(task.record_settings)}; {kept} of {len(tasks)} records kept "
                   f"in {folder}")
        raise (InputError if isinstance(error, InputError) else TaskError)(message) from error
    return records


MainFunction = TypeVar("MainFunction", bound=Callable[..., int])


def exits_on_task_failure(prog: str) -> Callable[[MainFunction], MainFunction]:
    """Decorate an experiment's ``main``: a failed task (:class:`TaskError`) becomes its
    one-line message on stderr (``PROG: error: task ... failed ...``) and exit status 1; the
    finished tasks' records are kept, so the same command resumes. A task that refused its
    settings raises its InputError, bad input for the caller (status 2)."""

    def decorate(main: MainFunction) -> MainFunction:
        @functools.wraps(main)
        def guarded_main(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except TaskError as error:
                print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
                return 1
        return guarded_main  # type: ignore[return-value]
    return decorate


# ---------------------------------------------------------------------- blocks of chains
def chain_blocks(chains: int, block: int) -> list[int]:
    """The sizes of the blocks of at most ``block`` chains that make up ``chains`` (all full
    but the last)."""
    from ..validation import positive_int

    positive_int("chains", chains)
    positive_int("block", block)
    return [min(block, chains - start) for start in range(0, chains, block)]


def block_tasks(function: TaskFunction, settings: Mapping[str, Any], *, chains: int, block: int,
                sweep_seed: int = 0, name: str = "") -> list[Task]:
    """One task per block of ``chains``: ``settings`` with ``chains`` (the block's size) and
    ``block`` (its index), so each block has its own seed and more chains add blocks."""
    if "block" in settings:
        raise InputError("settings may not use the name 'block': block_tasks sets it")
    return [Task(function, {**settings, "chains": size, "block": index}, sweep_seed,
                 name=f"{name} block {index}".strip())
            for index, size in enumerate(chain_blocks(chains, block))]


def moments_json(moments: Moments) -> dict[str, list[Any]]:
    """``moments`` as a JSON map of lists (``mean``, ``var``, ``count``), for a task's results."""
    return {"mean": moments.mean.tolist(), "var": moments.var.tolist(),
            "count": moments.count.tolist()}


def pool_moments(parts: Sequence[Moments | Mapping[str, Any]]) -> Moments:
    """The moments over the union of the chains of ``parts`` (:class:`Moments` or their
    :func:`moments_json`), by :meth:`Moments.pooled`; the same parts in the same order give
    the same bits."""
    if not parts:
        raise InputError("pool_moments needs at least one part")
    moments = [part if isinstance(part, Moments) else
               Moments(torch.tensor(part["mean"], dtype=torch.float64),
                       torch.tensor(part["var"], dtype=torch.float64),
                       torch.tensor(part["count"], dtype=torch.long)) for part in parts]
    shapes = {tuple(part.count.shape) for part in moments}
    if len(shapes) != 1:
        raise InputError(f"pool_moments: parts must record the same steps; got shapes {sorted(shapes)}")
    return Moments.pooled(moments)
