"""The theory experiments never write into the repository unless told (--out figures), keep the
poor-minimum cache in one runs/cache, and report bad input in one line with status 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_module import load_script

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    return load_script(f"experiments/{name}.py", f"{name}_script")


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_a_run_without_out_writes_a_fresh_runs_folder_and_touches_no_tracked_file(tmp_path, monkeypatch):
    script = load("rwsam_mechanism")
    monkeypatch.setattr(script, "NETWORK_QUICK", {**script.NETWORK_QUICK, "batches": 4,
                                                  "gd_steps": 5})
    monkeypatch.setattr(script, "LAMS_QUICK", [0.0, 1.0])
    monkeypatch.chdir(tmp_path)                      # runs/ is relative to the working folder
    before = git_status()
    for _ in range(2):
        assert script.main(["--quick", "--problems", "network", "--no-progress"]) == 0
    assert git_status() == before
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("rwsam_mechanism-"))
    assert len(runs) == 2                             # a fresh folder per run, nothing overwritten
    assert all((run / "rwsam_mechanism.json").is_file() and (run / "rwsam_mechanism.png").is_file()
               for run in runs)
    # both runs share the one default cache of the poor minimum, outside the run folders
    assert len(list((tmp_path / "runs" / "cache").glob("digits_poor_minimum_*.pt"))) == 1


@pytest.mark.parametrize("name", ["escape_speed", "sgn_trace", "rwsam_mechanism", "generalization",
                                  "sde_vs_discrete", "sde_corrections"])
def test_bad_input_is_one_line_and_status_2(name, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"),
                           "--device", "cuda", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--device" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()            # refused before any work
