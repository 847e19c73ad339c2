"""Where a sweep's tasks run: in this process, on a local process pool, or on a Dask cluster.

Every sweep submits its independent tasks (:mod:`sdesam.experiment.tasks`) to a standard
``concurrent.futures.Executor`` chosen by two flags shared by every experiment
(:func:`add_executor_arguments`):

* ``--jobs 1``: in this process, each task run when it is submitted, exactly as a plain loop;
* ``--jobs N`` (default: the cores this process may use): a local ``ProcessPoolExecutor`` of N
  workers, started with *spawn* (no forked torch state), one torch thread each;
* ``--scheduler tcp://HOST:8786``: a running Dask distributed cluster (``dask scheduler`` and
  ``dask worker tcp://HOST:8786`` on each machine, or a ``dask_jobqueue.SLURMCluster``), through
  ``distributed.Client(address).get_executor()``. Dask is imported only then. Its workers need
  sdesam installed, and the records folder on a disk they share (else the caller writes the
  records they return).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence

from .. import validation
from ..validation import InputError

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for a Dask scheduler to answer before giving up (seconds)."""

SCHEMES = ("tcp", "tls", "ws", "wss")
"""The Dask communication protocols ``--scheduler`` accepts."""

_ADDRESS = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)"
                      r":(?P<port>[0-9]{1,5})$")


def default_jobs() -> int:
    """The number of cores this process may run on (its CPU affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_jobs(jobs: Any) -> int:
    """``jobs`` if it is a positive integer (``None``: :func:`default_jobs`)."""
    return default_jobs() if jobs is None else validation.positive_int("--jobs", jobs)


def check_scheduler(address: Any) -> str:
    """``address`` as ``SCHEME://HOST:PORT`` (``tcp://`` when it names none), if it is one."""
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    scheme = (match.group("scheme") or "tcp") if match else None
    if match is None or scheme not in SCHEMES or not 0 < int(match.group("port")) < 65536:
        raise InputError(f"--scheduler must be a Dask scheduler address SCHEME://HOST:PORT "
                         f"(SCHEME one of {', '.join(SCHEMES)}; e.g. tcp://node01:8786); "
                         f"got {address!r}")
    return f"{scheme}://{match.group('host')}:{match.group('port')}"


class InProcessExecutor(Executor):
    """An Executor that runs each call in this process when it is submitted, as a loop would."""

    def __init__(self) -> None:
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` now; a finished Future holds its result or exception."""
        if self._shutdown:
            raise RuntimeError("cannot submit to an executor that was shut down")
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:      # an interrupt stops the sweep, as it stops a loop
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further submissions (nothing runs in the background)."""
        self._shutdown = True


def one_torch_thread() -> None:
    """Worker initializer: one torch thread, as parallelism comes from the workers."""
    import torch

    torch.set_num_threads(1)


def describe(jobs: int | None = None, scheduler: str | None = None) -> str:
    """Where tasks run, in words, for a run's metadata and log: in-process, N local processes
    or the Dask scheduler's address."""
    if scheduler is not None:
        return f"dask {check_scheduler(scheduler)}"
    jobs = check_jobs(jobs)
    return "in-process" if jobs == 1 else f"{jobs} local processes"


@contextlib.contextmanager
def make_executor(jobs: int | None = None, scheduler: str | None = None, *,
                  connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Executor]:
    """An Executor for ``--jobs`` / ``--scheduler`` (see the module doc), shut down on exit:
    bad values and an unreachable scheduler raise an InputError before any task runs."""
    if scheduler is not None:
        if jobs is not None:
            raise InputError("--jobs and --scheduler exclude each other: the Dask cluster's "
                             f"workers set the parallelism; got --jobs {jobs!r} and "
                             f"--scheduler {scheduler!r}")
        with _dask_executor(check_scheduler(scheduler), connect_timeout) as executor:
            yield executor
        return
    jobs = check_jobs(jobs)
    if jobs == 1:
        executor: Executor = InProcessExecutor()
    else:
        executor = ProcessPoolExecutor(max_workers=jobs, initializer=one_torch_thread,
                                       mp_context=multiprocessing.get_context("spawn"))
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _dask_executor(address: str, connect_timeout: float) -> Iterator[Executor]:
    """The executor of a Dask client connected to ``address``; the client is closed on exit."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask distributed: pip install 'dask[distributed]'") from None
    try:
        _handshake(address, connect_timeout)
        client = Client(address, timeout=connect_timeout, set_as_default=False)
    except Exception as error:      # refused, timed out, not a Dask scheduler: all one answer
        reason = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"--scheduler {address}: no Dask scheduler answered within "
                         f"{connect_timeout:g} s ({reason})") from None
    executor = client.get_executor(pure=False)
    finished = False
    try:
        yield executor
        finished = True
    finally:
        executor.shutdown(wait=finished)    # on an error, cancel what is still queued
        client.close()


def _handshake(address: str, timeout: float) -> None:
    """Connect to ``address`` and exchange Dask's handshake within ``timeout`` seconds, else
    raise: Dask's own connect timeout stops at the TCP connection, so a peer that accepts it
    and never speaks Dask would hang the client."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect
    from distributed.security import Security

    async def exchange() -> None:
        comm = await asyncio.wait_for(
            connect(address, timeout=timeout, **Security().get_connection_args("client")),
            timeout)
        await comm.close()

    with ThreadPoolExecutor(1) as thread:    # its own event loop, whatever runs in this thread
        try:
            thread.submit(asyncio.run, exchange()).result()
        except asyncio.TimeoutError:
            raise TimeoutError(f"no handshake after {timeout:g} s") from None


def add_executor_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--jobs`` and ``--scheduler`` (the same flags and help in every experiment)."""
    group = parser.add_argument_group("where tasks run")
    group.add_argument("--jobs", type=int, default=None, metavar="N",
                       help=f"run tasks in N local worker processes, one torch thread each "
                            f"(default: all {default_jobs()} cores); --jobs 1 runs them in this "
                            "process, one after another")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="send tasks to a running Dask cluster instead, e.g. tcp://HOST:8786 "
                            "(started with 'dask scheduler' and 'dask worker ADDRESS' on each "
                            "machine, or a dask_jobqueue SLURMCluster); workers need sdesam installed")
    return parser


def executor_from_args(args: argparse.Namespace) -> contextlib.AbstractContextManager[Executor]:
    """:func:`make_executor` for parsed ``--jobs`` and ``--scheduler``."""
    return make_executor(getattr(args, "jobs", None), getattr(args, "scheduler", None))


def check_executor_arguments(args: argparse.Namespace) -> str:
    """Refuse bad ``--jobs`` / ``--scheduler`` values before any work (an InputError naming
    them; reaching the scheduler is tried when the tasks are sent); where tasks will run, in
    words (:func:`describe`)."""
    jobs, scheduler = getattr(args, "jobs", None), getattr(args, "scheduler", None)
    if scheduler is not None and jobs is not None:
        raise InputError("--jobs and --scheduler exclude each other: the Dask cluster's "
                         f"workers set the parallelism; got --jobs {jobs!r} and "
                         f"--scheduler {scheduler!r}")
    return describe(jobs, scheduler)


RunBatch = Callable[[Sequence[Any], str], "list[dict[str, Any]]"]
"""``run(tasks, description) -> records``: runs one batch of a sweep's tasks."""


@contextlib.contextmanager
def sweep_runner(args: argparse.Namespace, records_dir: str | os.PathLike) -> Iterator[RunBatch]:
    """A function that runs batches of tasks (:func:`sdesam.experiment.tasks.run_tasks`, its
    records in ``records_dir``, a progress bar unless ``--no-progress``) where ``--jobs`` /
    ``--scheduler`` say, on one executor started at the first batch that has a task to run
    and shut down when the block ends: a batch whose records all exist starts nothing, and a
    lone task while no local worker is started runs in this process. Bad flags are refused
    on entry."""
    from .tasks import record_path, run_tasks

    check_executor_arguments(args)
    jobs, scheduler = getattr(args, "jobs", None), getattr(args, "scheduler", None)
    progress = not getattr(args, "no_progress", False)
    with contextlib.ExitStack() as stack:
        executor: Executor | None = None

        def run(tasks: Sequence[Any], desc: str = "tasks") -> list[dict[str, Any]]:
            nonlocal executor
            pending = len({task.key for task in tasks
                           if not record_path(records_dir, task).exists()})
            chosen = executor
            if chosen is None and (pending == 0 or (pending == 1 and scheduler is None)):
                chosen = InProcessExecutor()
            elif chosen is None:
                chosen = executor = stack.enter_context(make_executor(jobs, scheduler))
            return run_tasks(tasks, chosen, records_dir, desc=desc, progress=progress)

        yield run


def run_sweep(tasks: Sequence[Any], args: argparse.Namespace, records_dir: str | os.PathLike,
              *, desc: str = "tasks") -> list[dict[str, Any]]:
    """The records of ``tasks``, run as one batch of a :func:`sweep_runner`."""
    with sweep_runner(args, records_dir) as run:
        return run(tasks, desc)
