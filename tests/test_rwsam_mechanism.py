"""experiments/rwsam_mechanism.py end to end on tiny settings: the one record schema, the
push and equivalent m per problem and rule, and a figure redrawn from the data file."""


import pytest

from sdesam.plotting import redraw
from sdesam.experiment.records import read_record
from script_module import load_script


@pytest.fixture()
def experiment(monkeypatch):
    module = load_script("experiments/rwsam_mechanism.py")
    monkeypatch.setattr(module, "LANDSCAPE_QUICK", {"batches": 100, "offsets": [0.0]})
    monkeypatch.setattr(module, "LOGISTIC_QUICK", {"batches": 100})
    monkeypatch.setattr(module, "LAMS_QUICK", [0.0, 4.0])
    return module


def test_tiny_run_writes_push_and_equivalent_m_and_redraws(experiment, tmp_path):
    out = tmp_path / "run"
    assert experiment.main(["--quick", "--problems", "landscape", "logistic", "--out", str(out),
                            "--no-progress"]) == 0
    data = read_record(out / "rwsam_mechanism.json")
    assert data["settings"]["experiment"] == "rwsam_mechanism"
    assert "wall_time_s" not in data["settings"]
    rows = data["results"]["diagnosis"]
    assert {r["problem"] for r in rows} == {"landscape", "logistic"}
    for r in rows:
        assert {"push", "push_stderr", "equivalent_m", "equivalent_m_stderr", "ess"} <= set(r)
        assert (r["micro"] is None) == (r["rule"] not in ("m-sam", "m-usam"))
        assert "push_jackknife" not in r
    sam = {r["problem"]: r for r in rows if r["rule"] == "sam"}
    uniform = [r for r in rows if r["rule"] == "rw-sam" and r["lam"] == 0.0]
    for r in uniform:
        assert r["push"] == pytest.approx(sam[r["problem"]]["push"])
        assert r["equivalent_m"] == pytest.approx(r["batch"])
    assert {"rw-sam", "rw-sam-wd", "rw-sam-wr", "rw-sam-draw"} <= {r["rule"] for r in rows}
    written = redraw(out / "rwsam_mechanism.json", tmp_path / "again")
    assert all(path.stat().st_size > 0 for path in written)
