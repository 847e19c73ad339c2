"""Every committed data file in figures/ follows the one record schema (and redraws: slow)."""

from pathlib import Path

import pytest

from sdesam import plotting
from sdesam.experiment.records import read_record

FIGURES = Path(__file__).resolve().parents[1] / "figures"
DATA_FILES = sorted(FIGURES.glob("*.json"))


def test_there_are_committed_data_files():
    assert DATA_FILES


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.name)
def test_committed_data_file_follows_the_schema(path):
    data = read_record(path)
    assert data["settings"]["experiment"] == path.stem
    for table, rows in data["results"].items():
        for row in rows:
            assert "algorithm" not in row, f"{path.name}: {table} names a rule 'algorithm'"
            assert all(not isinstance(v, dict) for v in row.values()), f"{path.name}: {table} not flat"


@pytest.mark.slow
@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.name)
def test_committed_data_file_redraws(path, tmp_path):
    written = plotting.redraw(path, tmp_path)
    assert {p.suffix for p in written} == {".png", ".pdf"} and all(p.stat().st_size > 1000 for p in written)
