"""--cache is checked before any work, in every experiment that takes it (like --out): a folder
that cannot take the poor minimum is refused in one line naming --cache, not after 4000 GD
steps. Tests run as root, where chmod does not stop writes, so the unwritable folder is a path
under a regular file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdesam.experiment import digits
from sdesam.validation import InputError
from script_module import ROOT, load_script


def unwritable(tmp_path: Path) -> Path:
    """A folder no one can create: its parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "cache"


def no_work(*args, **kwargs):
    raise AssertionError("work started before --cache was checked")


@pytest.mark.parametrize("name, argv, work", [
    ("sgn_trace", ["--protocol", "network"], ["network_runs", "landscape_runs"]),
    ("escape_speed", ["--protocol", "network"], ["network_protocol", "landscape_protocol"]),
    ("escape_speed", ["--protocol", "all"], ["network_protocol", "landscape_protocol"]),
    ("rwsam_mechanism", ["--problems", "landscape", "network"], ["network_problem", "diagnose_point"]),
])
def test_an_unwritable_cache_is_refused_before_any_work(name, argv, work, tmp_path, monkeypatch):
    script = load_script(f"experiments/{name}.py", f"{name}_cache_script")
    for function in work:
        monkeypatch.setattr(script, function, no_work)
    monkeypatch.setattr(digits, "poor_minimum", no_work)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"^--cache '.*a-file/cache' is not writable"):
        script.main([*argv, "--quick", "--no-progress", "--out", str(out),
                     "--cache", str(unwritable(tmp_path))])
    assert not out.exists()                              # refused before the output folder too


def test_the_command_line_says_it_in_one_line_with_status_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "sgn_trace.py"),
                           "--protocol", "network", "--quick", "--cache", str(unwritable(tmp_path)),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "--cache" in done.stderr


def test_the_library_checks_cache_dir_before_the_gradient_descent(tmp_path, monkeypatch):
    data = digits.load_digits_data(100, 20)
    monkeypatch.setattr(digits, "make_model", no_work)
    with pytest.raises(InputError, match="^cache_dir .* is not writable"):
        digits.poor_minimum(data, steps=5, cache_dir=unwritable(tmp_path), progress=False)


def test_a_cache_that_already_holds_the_minimum_need_not_be_writable(tmp_path, monkeypatch):
    data = digits.load_digits_data(100, 20)
    model, summary = digits.poor_minimum(data, hidden=8, steps=3, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(digits, "check_writable", no_work)     # as if the folder were read-only
    again, cached = digits.poor_minimum(data, hidden=8, steps=3, cache_dir=tmp_path, progress=False)
    assert cached == summary
    with pytest.raises(AssertionError, match="before --cache"):   # a new minimum must be written
        digits.poor_minimum(data, hidden=8, steps=4, cache_dir=tmp_path, progress=False)


def test_experiments_that_never_use_the_cache_do_not_take_it(tmp_path, capsys):
    script = load_script("experiments/sde_corrections.py", "sde_corrections_cache_script")
    with pytest.raises(SystemExit) as refused:
        script.main(["--quick", "--out", str(tmp_path / "out"), "--cache", str(tmp_path)])
    assert refused.value.code == 2 and "unrecognized arguments: --cache" in capsys.readouterr().err
