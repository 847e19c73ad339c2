"""experiments/sde_vs_discrete.py end to end: the documented JSON shape, orders and a redraw."""

import importlib.util
import json
from pathlib import Path

import pytest

from sdesam import plotting

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("sde_vs_discrete_script",
                                                  ROOT / "experiments" / "sde_vs_discrete.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_shape(data, chains):
    settings = data["settings"]
    assert settings["experiment"] == "sde_vs_discrete" and "git_commit" in settings
    assert settings["chains"] == chains and settings["wall_time_s"] > 0
    keys = {"algorithm", "micro", "batch", "eta", "rho", "test_fn", "weak_error", "stderr",
            "weak_error_without_variance_term", "sweep"}
    for row in data["results"]:
        assert keys <= row.keys()
        assert row["weak_error"] >= 0 and row["stderr"] > 0
    sweeps = {row["sweep"] for row in data["results"]}
    assert sweeps == {"coupled", "fixed_rho", "fixed_eta"}
    coupled = [r for r in data["results"] if r["sweep"] == "coupled"]
    for row in coupled:
        assert abs(row["rho"] - settings["kappa"] * row["eta"] ** 0.5) < 1e-12
    for key in ("usam[m=4]", "m-usam[m=1]"):
        assert isinstance(data["orders"][key], float)


def test_quick_run_writes_data_and_figure_and_redraws(tmp_path):
    script = load_script()
    assert script.main(["--quick", "--out", str(tmp_path), "--chains", "400"]) == 0
    data = json.loads((tmp_path / "sde_vs_discrete.json").read_text())
    check_shape(data, 400)
    assert (tmp_path / "sde_vs_discrete.png").stat().st_size > 0
    paths = plotting.redraw(tmp_path / "sde_vs_discrete.json", tmp_path / "again")
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.exists() for p in paths)


def test_bad_device_is_refused_before_any_work(tmp_path):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--quick", "--out", str(tmp_path), "--device", "tpu"])
    assert not (tmp_path / "sde_vs_discrete.json").exists()


@pytest.mark.slow
def test_quick_settings_show_the_variance_term_raises_the_order(tmp_path):
    """With enough chains the SDE with the tr V term converges at about order 1 in eta along
    rho = kappa sqrt(eta), clearly faster than the SDE without it (about 1/2)."""
    script = load_script()
    script.main(["--quick", "--out", str(tmp_path), "--chains", "30000"])
    data = json.loads((tmp_path / "sde_vs_discrete.json").read_text())
    details = data["orders"]["m-usam[m=1] details"]
    assert details["with_variance_term"]["order"] > 0.75
    assert details["without_variance_term"]["order"] < details["with_variance_term"]["order"] - 0.3
