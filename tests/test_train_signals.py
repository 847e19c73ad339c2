"""A real ``sdesam train`` process stopped by Ctrl-C (SIGINT) or killed (SIGKILL): Ctrl-C prints one
line with the last checkpoint and the exact command that continues the run, and exits 130;
after either, ``--resume`` ends with the very parameters of an uninterrupted run."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SDESAM = Path(sys.executable).with_name("sdesam")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run alike, and quick on a shared CPU
EPOCHS = 4
FLAGS = ["--dataset", "synthetic", "--model", "small", "--rule", "sam", "--epochs", str(EPOCHS),
         "--synthetic-train", "128", "--synthetic-test", "64", "--batch", "32", "--seed", "3",
         "--no-progress"]
# Ctrl-C raises KeyboardInterrupt as in a terminal, even when the test suite itself runs as a
# background job (a non-interactive shell starts those with SIGINT ignored, and Python then
# installs no handler in the children); every epoch after the first waits (up to 30 s) for the
# test's signal, so the signal sent after the first checkpoint lands mid-run however slowly
# the test's polling is scheduled
SLOW_EPOCHS = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from sdesam.train import loop
original = loop._run_epoch
def slowed(run, epoch):
    if epoch > 0:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return original(run, epoch)
loop._run_epoch = slowed
from sdesam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(out: Path) -> subprocess.Popen:
    """``sdesam train FLAGS --out OUT`` in a process of its own, its epochs slowed."""
    return subprocess.Popen([sys.executable, "-c", SLOW_EPOCHS, "train", *FLAGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def _wait_for_first_epoch(out: Path, process: subprocess.Popen) -> None:
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.02)


def _final_state(out: Path) -> dict:
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == EPOCHS
    return saved


def _assert_same_run(out: Path, reference: dict) -> None:
    state = _final_state(out)
    for key, value in reference["model"].items():
        assert torch.equal(state["model"][key], value), key
    assert [m["train_loss"] for m in state["metrics"]] == [m["train_loss"] for m in reference["metrics"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("signals") / "full"
    done = subprocess.run([str(SDESAM), "train", *FLAGS, "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    return _final_state(out)


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume_exactly(tmp_path, reference):
    out = tmp_path / "cut"
    process = _start(out)
    _wait_for_first_epoch(out, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    found = re.fullmatch(r"sdesam train: interrupted; the last checkpoint is (\S+) \(epoch (\d+)\); "
                         r"continue with: (.+)\n", stderr)
    assert found, stderr
    assert Path(found[1]) == out / "checkpoint.pt"
    assert int(found[2]) == torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] < EPOCHS
    command = shlex.split(found[3])
    assert command[:2] == ["sdesam", "train"] and command[-1] == "--resume"
    assert {word for word in command if word.startswith("--")} == \
        {"--model", "--rule", "--epochs", "--synthetic-train", "--synthetic-test", "--batch",
         "--seed", "--out", "--no-progress", "--resume"}   # what was given, not the defaults
    assert not list(out.glob(".*.tmp"))                    # no half-written file
    resumed = subprocess.run([str(SDESAM), *command[1:]], capture_output=True, text=True,
                             timeout=300, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, reference)


def test_a_killed_run_leaves_no_claim_behind_and_resumes_exactly(tmp_path, reference):
    out = tmp_path / "killed"
    process = _start(out)
    _wait_for_first_epoch(out, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    resumed = subprocess.run([str(SDESAM), "train", *FLAGS, "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, reference)
