"""The figure dispatcher: redraw from a data file alone, by module, CLI and ``python -m``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdesam import plotting
from sdesam.cli import main as cli_main
from sdesam.experiment.records import make_record


def sgn_trace_data():
    """A hand-made record of the sgn_trace schema."""
    rules = (("sgd", None), ("m-sam", 1), ("sam", None), ("rw-sam", None))
    curves = [{"protocol": p, "rule": r, "micro": m, "step": [0, 10, 20],
               "trace_V": [3.0, 2.0, 1.0 + k], "trace_V_stderr": [0.1, 0.1, 0.1],
               "chains": 2, "diverged": 0}
              for p in ("landscape", "network-poor") for k, (r, m) in enumerate(rules)]
    final = [{"protocol": "network-poor", "rule": r, "micro": m, "trace_V": 1.0 + k,
              "trace_V_std": 0.1, "chains": 2, "diverged": 0} for k, (r, m) in enumerate(rules)]
    settings = {"experiment": "sgn_trace", "quick": True, "landscape": {"batch": 4},
                "network": {"batch": 4}}
    return make_record(settings, {"curves": curves, "final": final}, {"wall_time_s": 1.0})


def test_publish_then_redraw_from_the_data_file_alone(tmp_path):
    written = plotting.publish(sgn_trace_data(), tmp_path / "run")
    assert [p.name for p in written] == ["sgn_trace.json", "sgn_trace.png", "sgn_trace.pdf"]
    data_file = written[0]
    assert json.loads(data_file.read_text())["settings"]["experiment"] == "sgn_trace"
    redrawn = plotting.redraw(data_file, tmp_path / "again")
    assert {p.name for p in redrawn} == {"sgn_trace.png", "sgn_trace.pdf"}
    assert all(p.stat().st_size > 1000 for p in redrawn)
    assert redrawn[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_and_module_entry_points(tmp_path):
    data_file = plotting.publish(sgn_trace_data(), tmp_path)[0]
    assert cli_main(["plot", str(data_file), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "sgn_trace.png").is_file()
    done = subprocess.run([sys.executable, "-m", "sdesam.plotting", str(data_file),
                           "--out", str(tmp_path / "module")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "module" / "sgn_trace.pdf").is_file()


def record_of(experiment):
    return {"settings": {"experiment": experiment}, "metadata": {}, "results": {}}


@pytest.mark.parametrize("data, word", [
    (record_of("no_such_figure"), "no figure"),
    (record_of("../evil"), "experiment"),
    ({"curves": []}, "exactly the keys"),
    ({"settings": {"experiment": "sgn_trace"}, "curves": [], "final": []}, "exactly the keys"),
    ({**record_of("sgn_trace"), "results": {"curves": [{"micro": "4"}]}}, "micro"),
    ({**record_of("sgn_trace"), "results": {"final": []}}, "does not hold what"),
])
def test_bad_data_files(tmp_path, data, word, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # redraw's default folder is runs/ of the cwd
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=word):
        plotting.redraw(path)


def test_publish_refuses_a_record_outside_the_schema(tmp_path):
    with pytest.raises(ValueError, match="exactly the keys"):
        plotting.publish({"settings": {"experiment": "sgn_trace"}, "curves": []}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_data_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plotting.redraw(tmp_path / "absent.json")


def test_redraw_without_a_folder_writes_to_a_fresh_run_folder(tmp_path, monkeypatch, capsys):
    """Not beside the data file: there, in figures/, are the committed figures."""
    data_file = plotting.publish(sgn_trace_data(), tmp_path / "figures")[0]
    committed = {p.name: p.read_bytes() for p in data_file.parent.iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli_main(["plot", str(data_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    (folder,) = (work / "runs").iterdir()
    assert folder.name.startswith("plot-") and out[0] == f"writing to {Path('runs') / folder.name}/"
    assert sorted(p.name for p in folder.iterdir()) == ["sgn_trace.pdf", "sgn_trace.png"]
    assert {p.name: p.read_bytes() for p in data_file.parent.iterdir()} == committed
    again = plotting.redraw(data_file)
    assert again[0].parent.parent == Path("runs") and again[0].parent != Path("runs") / folder.name


def test_a_folder_is_not_a_data_file(tmp_path):
    (tmp_path / "escape_speed.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"is a folder; expected a data file \(\.json\) written "
                                         r"by an experiment, such as .*escape_speed\.json"):
        plotting.redraw(tmp_path)
    with pytest.raises(ValueError, match=r"is a folder; expected a data file \(\.json\) written "
                                         r"by an experiment$"):
        plotting.redraw(empty)


def test_every_data_file_is_checked_before_any_is_drawn(tmp_path, capsys):
    data_file = plotting.publish(sgn_trace_data(), tmp_path / "figures")[0]
    out = tmp_path / "out"
    assert cli_main(["plot", str(data_file), str(tmp_path / "absent.json"), "--out", str(out)]) == 2
    assert "absent.json' does not exist" in capsys.readouterr().err and not out.exists()
    other = plotting.publish(sgn_trace_data(), tmp_path / "other")[0]
    assert cli_main(["plot", str(data_file), str(other), "--out", str(out)]) == 2
    assert "would both draw sgn_trace.png" in capsys.readouterr().err and not out.exists()


def test_module_entry_point_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sdesam.plotting", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("python -m sdesam.plotting: error:") and "is a folder" in done.stderr
