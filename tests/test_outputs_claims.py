"""Output folders are claimed atomically (fresh folders by mkdir, named ones by a lock), and a
full file system during a write is one line naming the file, with no partial file left."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from sdesam.experiment import outputs, records
from sdesam.experiment.outputs import claimed, fresh_run_dir
from sdesam.experiment.records import NoSpaceError, atomic_write
from sdesam.validation import InputError


def test_fresh_run_dirs_asked_for_at_the_same_moment_are_distinct_and_created(tmp_path):
    count = 12
    start = threading.Barrier(count)
    folders: list[Path] = []

    def ask() -> None:
        start.wait()
        folders.append(fresh_run_dir("race", root=tmp_path / "runs"))

    threads = [threading.Thread(target=ask) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(folders)) == count
    assert all(folder.is_dir() for folder in folders)
    assert len(list((tmp_path / "runs").iterdir())) == count


HOLD = """
import sys, time
from sdesam.experiment.outputs import claimed
with claimed(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_claimed_folder_is_refused_to_a_second_process_and_freed_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"--out '{tmp_path}' is in use by another run "
                                             rf"\(process {holder.pid}\)"):
            with claimed(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)        # no clean-up runs: the kernel frees the lock
        holder.wait()
    with claimed(tmp_path, argument="--runs-dir") as folder:
        assert folder == tmp_path
        with pytest.raises(InputError, match="--runs-dir .* is in use"):
            with claimed(tmp_path, argument="--runs-dir"):   # another open file, same process
                pass


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_writer_hitting_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def write(handle) -> None:
        handle.write("partial")
        raise _enospc()

    with pytest.raises(NoSpaceError) as caught:
        atomic_write(path, write)
    message = str(caught.value)
    assert message.count("\n") == 0 and "no space left on" in message
    assert f"while writing {str(path)!r}; its previous version is kept" in message
    assert isinstance(caught.value, InputError)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


class _FullAfter(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, room: int) -> None:
        self.room, self.written = room, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.room:
            raise _enospc()
        self.written += len(data)
        return len(data)


def test_torch_save_onto_a_full_disk_is_named_not_unexpected_pos(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    def full_fdopen(fd, mode="r", *args, **kwargs):
        real_fdopen(fd, mode).close()               # the temporary file stays empty
        return io.BufferedWriter(_FullAfter(room=4096))

    monkeypatch.setattr(records.os, "fdopen", full_fdopen)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(NoSpaceError, match=rf"while writing {str(path)!r}; it was not created"):
        atomic_write(path, lambda handle: torch.save({"w": torch.zeros(10_000)}, handle), mode="wb")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x.txt", lambda handle: 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_the_room_a_run_needs(tmp_path, monkeypatch):
    usage = outputs.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage",
                        lambda folder: usage._replace(free=5 * 2**20 - 1))
    with pytest.raises(InputError, match=r"no space left on .* \(5.0 MiB free, the run needs "
                                         r"about 5.0 MiB\)"):
        outputs.check_writable(tmp_path, needed_bytes=5 * 2**20)
    assert outputs.check_writable(tmp_path, needed_bytes=5 * 2**20 - 1) == tmp_path
