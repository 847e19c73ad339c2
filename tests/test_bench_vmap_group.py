"""experiments/benchmarks/bench_vmap_group.py times vmapped against sequential m-SAM per m."""

from __future__ import annotations


import pytest

from sdesam.validation import InputError
from script_module import load_script


def load_bench():
    return load_script("experiments/benchmarks/bench_vmap_group.py")


def test_table_has_a_paired_ratio_per_micro_batch_size(tmp_path):
    bench = load_bench()
    assert bench.main(["--batch-size", "4", "--micro", "2", "1", "--rounds", "6",
                       "--out", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split() for line in
            (tmp_path / "bench_vmap_group-small.txt").read_text().splitlines()
            if line.strip()[:1].isdigit()}
    assert set(rows) == {"2", "1"}
    assert rows["2"][1] == "2" and rows["1"][1] == "4"  # micro-batches per vmapped pass
    low, high = (float(v) for v in rows["1"][5].split(".."))
    assert 0 < low <= float(rows["1"][4]) <= high


def test_vmapped_contender_really_vmaps_and_the_other_does_not():
    import torch
    bench = load_bench()
    model = torch.nn.Linear(3, 2)
    assert bench.optimizer(model, 1, vmapped=True).vmap_group(2) == 2
    assert bench.optimizer(model, 1, vmapped=False).vmap_group(2) == 1


@pytest.mark.parametrize("argv,named", [(["--rounds", "3"], "--rounds"),
                                        (["--micro", "5"], "--micro"),
                                        (["--micro", "32"], "--micro")])
def test_bad_settings_are_refused_before_work(argv, named):
    with pytest.raises(InputError, match=named):
        load_bench().main(argv)
