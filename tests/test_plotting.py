"""The figure dispatcher: redraw from a data file alone, by module, CLI and ``python -m``."""

import json
import subprocess
import sys

import pytest

from sdesam import plotting
from sdesam.cli import main as cli_main


def sgn_trace_data():
    """A hand-made data file of the documented sgn_trace shape."""
    curves = [{"protocol": p, "algorithm": a, "micro": m, "step": [0, 10, 20],
               "trace": [3.0, 2.0, 1.0 + k], "stderr": [0.1, 0.1, 0.1]}
              for p in ("landscape", "network-poor")
              for k, (a, m) in enumerate((("sgd", 4), ("m-sam", 1), ("rw-sam", 4)))]
    final = [{"protocol": "network-poor", "algorithm": a, "micro": m, "trace_mean": 1.0 + k,
              "trace_std": 0.1, "seeds": 2}
             for k, (a, m) in enumerate((("sgd", 4), ("m-sam", 1), ("rw-sam", 4)))]
    settings = {"experiment": "sgn_trace", "quick": True, "landscape": {"batch": 4},
                "network": {"batch": 4}}
    return {"settings": settings, "curves": curves, "final": final}


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


@pytest.mark.parametrize("data, word", [
    ({"settings": {"experiment": "no_such_figure"}}, "no figure"),
    ({"settings": {"experiment": "../evil"}}, "experiment"),
    ({"curves": []}, "settings.experiment"),
])
def test_bad_data_files(tmp_path, data, word):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=word):
        plotting.redraw(path)


def test_missing_data_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plotting.redraw(tmp_path / "absent.json")
