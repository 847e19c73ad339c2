"""Measure every time the README quotes, with the machine and its load.

Two kinds of time:

* the quick commands (``--quick``), the library commands, the benchmarks whose duration the
  README states and the test suite are run here, each ``--repeats`` times in a row; reported:
  median wall time, median process CPU time (the command and its children), and the 1-minute
  load average before and after;
* the default runs that made the committed figures are far too long to repeat: their wall
  and CPU times (and, for a run of many trainer runs, the runs' own wall time) are read from
  the ``metadata`` of the committed data files in ``figures/``, which the run itself recorded.

Every duration the README quotes for a command must be one of these: :func:`uncovered` lists
those that are not (the run ends with them, and a test keeps the list empty). A full run takes
about 15 minutes on the 2-core machine (the test suite about 6 of them, bench_sde about 3);
``--only TEXT`` times the matching commands. The commands run in a fresh clone of the
repository, so what is timed is the committed state (commit first).

Prints a table; writes it to ``OUT/readme_times.txt`` (default: a fresh ``runs/`` folder;
``--out experiments/benchmarks`` replaces the committed table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdesam.cli import OneLineParser, guarded  # noqa: E402
from sdesam.experiment.outputs import check_writable, resolve_out  # noqa: E402
from sdesam.experiment.records import atomic_write  # noqa: E402
from sdesam.validation import InputError  # noqa: E402

TIMED = ("--quick", "sdesam derive", "sdesam plot", "sdesam train --dataset synthetic",
         "sdesam train --dataset mnist1d", "derivations/run_all.py", "benchmarks/bench_sde.py",
         "python -m pytest")

DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?\s?(?:s|min|minutes|h|hours)\b")
"""A duration as the README writes one: ``5.7 s``, ``6.2 minutes``, ``98 min``, ``1.7–6 s``."""

COMMAND = re.compile(r"`((?:[A-Z_]+=\S+ )*(?:python |sdesam |torchrun |experiments/|derivations/)[^`]*)`")
"""A command in backticks (environment assignments first allowed)."""


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README text that this script times (quick, library and
    benchmark commands, the test suite)."""
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and any(key in command for key in TIMED) and "pip install" not in command:
                found.append(command)
    return found


def quoted_durations(text: str) -> list[str]:
    """The commands the README quotes a duration for: the first cell of a table row with a
    duration, a code-block command with a duration in its comment, and a command in a prose
    sentence that gives a duration."""
    found, prose, in_code = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|"):
            command = COMMAND.search(cells[0])
            if command and any(DURATION.search(c) for c in cells[1:]):
                found.append(command.group(1))
        elif in_code:
            if "#" in line and DURATION.search(line.split("#", 1)[1]):
                found.append(line.split("#", 1)[0].strip())
        else:
            prose.append(line)
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(])", " ".join(prose)):
        if DURATION.search(sentence):
            found += COMMAND.findall(sentence)
    return found


def covered(command: str, timed: list[str], committed: list[str]) -> bool:
    """Whether ``command`` (``...`` standing for omitted arguments) is timed here, is a
    default run whose data file ``figures/NAME.json`` records its time, or is a committed
    benchmark table ``experiments/benchmarks/NAME.txt`` (its times are re-measured by
    ``NAME.py``, which wrote it)."""
    if command.endswith(".txt"):
        return (ROOT / command).with_suffix(".py").is_file()
    if "--out figures" in command:
        script = next((word for word in command.split() if word.endswith(".py")), "")
        return f"{Path(script).stem}.json" in committed
    pattern = ".*".join(re.escape(piece.strip()) for piece in command.split("..."))
    return any(re.match(pattern, t.removeprefix("python ")) or re.match(pattern, t) for t in timed)


def uncovered(text: str) -> list[str]:
    """The commands the README quotes a duration for that this script does not measure."""
    timed = readme_commands(text)
    committed = [name for name, *_ in committed_runs()]
    return [c for c in quoted_durations(text) if not covered(c, timed, committed)]


def machine() -> str:
    """One line naming the machine: processor, cores, Python."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def time_command(command: str, workdir: Path) -> tuple[float, float]:
    """Wall and CPU seconds (children included) of one run of ``command`` in ``workdir``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"README command failed: {command}\n"
                           f"{(done.stdout + done.stderr)[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def committed_runs() -> list[tuple[str, float | None, float | None, float | None]]:
    """(data file, wall s, CPU s, its trainer runs' own wall s) of every committed default run,
    from its own metadata (the last None for a run without trainer runs)."""
    rows = []
    for path in sorted((ROOT / "figures").glob("*.json")):
        metadata = json.loads(path.read_text()).get("metadata", {})
        rows.append((path.name, metadata.get("wall_time_s"), metadata.get("cpu_time_s"),
                     metadata.get("runs_wall_time_s")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Time the README's commands and print / write the table."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="runs per command (median reported)")
    parser.add_argument("--only", default=None, help="time only commands containing this text")
    parser.add_argument("--out", default=None, help="folder for readme_times.txt")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be a positive integer; got {args.repeats}")
    out = check_writable(resolve_out(args.out, "readme_times"))
    readme = (ROOT / "README.md").read_text()
    commands = [c for c in readme_commands(readme) if args.only is None or args.only in c]
    if not commands:
        raise InputError(f"--only {args.only!r} matches none of the timed README commands")
    lines = [f"machine: {machine()}",
             f"load average (1 min) at start: {os.getloadavg()[0]:.2f}", "",
             f"{'command':<78} {'wall s':>8} {'CPU s':>8} {'load':>5}"]
    with tempfile.TemporaryDirectory() as folder:
        # a clone of the committed state: the commands run as a new user's would, and the test
        # suite (whose README test lists the tracked files) finds the git checkout it expects
        scratch = Path(folder) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(scratch)], check=True)
        for command in commands:
            runs = [time_command(command, scratch) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            lines.append(f"{command[:78]:<78} {wall:8.1f} {cpu:8.1f} {os.getloadavg()[0]:5.2f}")
            print(lines[-1], flush=True)
    lines += ["", "committed default runs (times recorded by the runs themselves; runs s: the "
              "wall time of the trainer runs they made or reused):",
              f"{'data file':<30} {'wall s':>8} {'CPU s':>8} {'runs s':>8}"]
    for name, wall, cpu, runs in committed_runs():
        fmt = lambda v: f"{v:8.0f}" if isinstance(v, (int, float)) else f"{'-':>8}"
        lines.append(f"{name:<30} {fmt(wall)} {fmt(cpu)} {fmt(runs)}")
    lines.append(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    missing = uncovered(readme)
    if missing:
        lines.append("README durations not measured here: " + "; ".join(missing))
    table = "\n".join(lines) + "\n"
    print(table)
    path = atomic_write(out / "readme_times.txt", lambda f: f.write(table))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded("readme_times", lambda: main()))
