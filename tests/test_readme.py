"""The README is executable: every Python block and shell command that needs neither CIFAR
files nor a GPU runs, as a new user would type it, in a scratch copy of the repository.

Not run, by rule (each is said where it is skipped): the install line and the test command
(that is what CI itself runs), and commands that need CIFAR batches, CUDA or several processes
(``cifar``, ``--data-dir``, ``--device cuda``, ``torchrun``). ``SDESAM_QUICK=1`` is set, which
the experiments honour as ``--quick``, so the commands that regenerate the committed figures
run at their quick size -- in the scratch copy, so nothing committed is touched. The quick
commands are marked slow (several minutes together); the Python blocks and the library
commands run in the default suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NEEDS_MORE = ("cifar", "--data-dir", "--device cuda", "torchrun")
RUN_BY_CI = ("pip install", "python -m pytest")
SLOW_MARKERS = ("experiments/", "sdesam run ")


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the README in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command line of the README's bash blocks (comments stripped, continuations joined)."""
    commands = []
    for block in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def eligible(command: str) -> bool:
    """Whether the test runs ``command`` (see the module docstring for what is left out)."""
    if any(word in command for word in NEEDS_MORE):
        return False
    return not any(command.startswith(prefix) for prefix in RUN_BY_CI)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tracked files of the repository (figures included), to run commands in."""
    target = tmp_path_factory.mktemp("readme") / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def environment(scratch: Path) -> dict[str, str]:
    """The user's environment with the scratch copy's package first and quick runs."""
    env = dict(os.environ, SDESAM_QUICK="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(scratch), env.get("PYTHONPATH", "")])
    return env


def run_shell(command: str, scratch: Path) -> None:
    """Run one README command in the scratch copy; fail with its output if it fails."""
    done = subprocess.run(command, shell=True, cwd=scratch, env=environment(scratch),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_readme_has_the_two_setup_commands_and_every_rule_is_sensible() -> None:
    commands = shell_commands()
    installs = [c.split("&&")[0].strip() for c in commands if c.startswith("pip install")]
    assert installs and all("-c requirements-lock.txt" in c for c in installs)
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(c.replace("pip install", "pip install -q", 1) in ci for c in installs), \
        "CI must install exactly as the README says"
    assert any("python -m pytest" in c for c in commands)
    assert [c for c in commands if eligible(c)], "no README command would be run"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index: int, scratch: Path) -> None:
    code = blocks("python")[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=environment(scratch),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README python block {index} failed:\n{code}\n{done.stderr[-3000:]}"


FAST = [c for c in shell_commands() if eligible(c) and not any(m in c for m in SLOW_MARKERS)]
SLOW = [c for c in shell_commands() if eligible(c) and any(m in c for m in SLOW_MARKERS)]


@pytest.mark.parametrize("command", FAST)
def test_library_command_runs(command: str, scratch: Path) -> None:
    run_shell(command, scratch)


@pytest.mark.slow
@pytest.mark.parametrize("command", SLOW)
def test_experiment_command_runs_quick(command: str, scratch: Path) -> None:
    run_shell(command, scratch)
