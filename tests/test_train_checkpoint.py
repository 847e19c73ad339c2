"""Checkpoints: atomic round trip and RNG states."""

from __future__ import annotations

import random

import pytest
import torch

from sdesam.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_and_rng_restore(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    state = rng_state()
    expected = (torch.rand(3), random.random())
    path = save_checkpoint(tmp_path / "ck.pt", {"epoch": 2, "weights": torch.arange(4.0),
                                                 "rng": state, "config": {"a": [1, 2]}})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left
    torch.manual_seed(0)
    random.seed(0)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and loaded["config"] == {"a": [1, 2]}
    assert torch.equal(loaded["weights"], torch.arange(4.0))
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_missing_or_foreign_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"epoch": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_a_truncated_or_corrupt_checkpoint_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1, "weights": torch.arange(100.0)})
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.pt' is truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.pt' is truncated or corrupt"):
        load_checkpoint(path)
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(ValueError, match=r"checkpoint.pt' lacks step, model"):
        load_checkpoint(path, required=("epoch", "step", "model"))
