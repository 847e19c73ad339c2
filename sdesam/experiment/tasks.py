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
Every task runs with one torch thread, so its results do not depend on where it ran.

Large chain counts split into blocks (:func:`chain_blocks`, :func:`block_tasks`), each a task
with its own seed; their moments are pooled with :func:`pool_moments`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..progress import progress_bar
from ..simulation.chains import Moments
from ..validation import InputError
from .records import _to_jsonable, atomic_write, make_record, read_record, run_metadata

TaskFunction = Callable[[dict[str, Any], int], dict[str, list[dict[str, Any]]]]
"""``function(settings, seed) -> results``: a task's work, a pure function of its arguments."""

SWEEP_SEED = "sweep_seed"
"""The setting under which a record keeps the sweep seed its task's seed was derived from."""


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: equal for equal values, whatever their order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=_to_jsonable)


@dataclass(frozen=True)
class Task:
    """One independent unit of a sweep: ``function(settings, seed)`` with a seed derived from
    the settings and ``sweep_seed``; ``name`` only labels it in progress and errors."""

    function: TaskFunction
    settings: dict[str, Any]
    sweep_seed: int = 0
    name: str = field(default="", compare=False)

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
        if not isinstance(self.sweep_seed, int) or isinstance(self.sweep_seed, bool):
            raise InputError(f"sweep_seed must be an integer; got {self.sweep_seed!r}")
        object.__setattr__(self, "settings", settings)

    @property
    def record_settings(self) -> dict[str, Any]:
        """The settings its record keeps: the task's settings and the sweep seed."""
        return {**self.settings, SWEEP_SEED: self.sweep_seed}

    @cached_property
    def key(self) -> str:
        """The task's identity: SHA-256 (hex) of the canonical JSON of its record settings."""
        return hashlib.sha256(canonical_json(self.record_settings).encode()).hexdigest()

    @property
    def seed(self) -> int:
        """The task's own seed (63 bits), a function of its identity only."""
        return int(self.key[:16], 16) >> 1

    @property
    def label(self) -> str:
        """How progress and errors name the task: ``name``, else the start of its key."""
        return self.name or self.key[:12]


def record_path(records_dir: str | os.PathLike, task: Task) -> Path:
    """Where ``task`` writes its record in ``records_dir``."""
    return Path(records_dir) / f"{task.key[:16]}.json"


def execute(task: Task, path: str) -> str:
    """Run ``task`` with one torch thread, write its record to ``path`` atomically (where this
    worker can) and return the record as JSON text."""
    wall, cpu = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = task.function(json.loads(canonical_json(task.settings)), task.seed)
    finally:
        torch.set_num_threads(threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metadata = {**run_metadata(), "host": socket.gethostname(), "pid": os.getpid(),
                "task": {"key": task.key, "seed": task.seed,
                         "function": f"{task.function.__module__}.{task.function.__qualname__}"},
                "wall_time_s": wall, "cpu_time_s": cpu}
    record = make_record(task.record_settings, results, metadata)
    text = json.dumps(record, indent=1, default=_to_jsonable)
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
