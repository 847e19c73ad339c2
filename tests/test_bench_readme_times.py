"""experiments/benchmarks/readme_times.py measures every duration the README quotes for a
command: the quick and library commands, the test suite, the stated benchmarks, and the
committed default runs (from their data files, including a run's trainer runs)."""

from __future__ import annotations

import pytest

from sdesam.validation import InputError
from script_module import ROOT, load_script


def load():
    return load_script("experiments/benchmarks/readme_times.py", "readme_times_script")


def test_every_duration_the_readme_quotes_is_measured():
    script = load()
    text = (ROOT / "README.md").read_text()
    quoted = script.quoted_durations(text)
    assert "python -m pytest -q" in quoted                     # "The test suite (...) took ..."
    assert any("--out figures" in c for c in quoted) and any("--quick" in c for c in quoted)
    assert script.uncovered(text) == []


def test_a_quoted_duration_it_does_not_measure_is_reported():
    script = load()
    text = "\n".join([
        "| command | wall | CPU |", "| --- | --- | --- |",
        "| `sdesam derive usam --order 2` | 7.9 s | 7.9 s |",
        "| `OMP_NUM_THREADS=1 sdesam train ... --epochs 3` (load 4) | 9.5 s | 9.5 s |",
        "| `python experiments/nowhere.py --fast` | 3.0 s | 3.0 s |",
        "| `experiments/sgn_trace.py --out figures` | 483 s | 478 s |",
        "| `experiments/lost.py --out figures` | 10 s | 10 s |",
        "", "The whole thing (`python tools/slow.py --all`) took 3.5 minutes at load 1.", "",
        "```bash", "sdesam derive usam --order 2", "python tools/other.py   # about 40 s",
        "OMP_NUM_THREADS=1 sdesam train --dataset digits --epochs 10", "```"])
    assert script.uncovered(text) == ["OMP_NUM_THREADS=1 sdesam train ... --epochs 3",
                                      "python experiments/nowhere.py --fast",
                                      "experiments/lost.py --out figures",
                                      "python tools/other.py", "python tools/slow.py --all"]


def test_committed_runs_carry_the_trainer_runs_wall_time():
    rows = {name: rest for name, *rest in load().committed_runs()}
    wall, cpu, runs = rows["generalization.json"]
    assert runs is not None and runs > 10 * wall               # 232 trainer runs, reused
    assert rows["sgn_trace.json"][2] is None


def test_a_short_run_times_the_chosen_command_and_lists_the_committed_runs(tmp_path, capsys):
    script = load()
    assert script.main(["--only", "sdesam derive usam --order 2", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "readme_times.txt").read_text()
    row = next(line for line in table.splitlines() if line.startswith("sdesam derive usam"))
    wall, cpu, load_average = (float(v) for v in row.split()[-3:])
    assert wall > 0 and cpu > 0
    assert "runs s" in table and "generalization.json" in table
    with pytest.raises(InputError, match="--only"):
        script.main(["--only", "no such command", "--out", str(tmp_path)])
