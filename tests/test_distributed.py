"""Data-parallel training on CPU: two gloo processes against one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdesam.train import TrainConfig, train

TINY = dict(dataset="synthetic", synthetic_train=64, synthetic_test=64, model="small",
            batch_size=32, epochs=2, seed=4, progress=False)
# rules whose DDP step equals the single-process step on the global batch: SGD, SAM with its
# global perturbation, and m-SAM with m = the per-device batch (its micro-batches are the shards)
RULES = {"sgd": {}, "sam": {}, "m-sam": {"micro": 16}}


def _free_ports(count: int) -> tuple[int, ...]:
    """Distinct free TCP ports (all sockets held open until every port is known)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def _worker(rank: int, world: int, ports: tuple[int, int], root: str) -> None:
    """One rank: train each rule, save this rank's final parameters.

    The first rule starts (and ends) the process group itself from the torchrun-style
    environment; the others run inside a group started here, as an embedding program would.
    """
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    for index, (name, extra) in enumerate(RULES.items()):
        if index == 1:
            os.environ["MASTER_PORT"] = str(ports[1])
            dist.init_process_group("gloo", rank=rank, world_size=world)
        result = train(TrainConfig(out=os.path.join(root, name), optimizer=name, **extra, **TINY))
        assert dist.is_initialized() == (index > 0)  # train() shut down only its own group
        torch.save({"state": result.model.state_dict(), "metrics": result.metrics},
                   os.path.join(root, f"{name}-rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_ports(2), str(tmp_path)), nprocs=2,
             join=True)
    for name, extra in RULES.items():
        single = train(TrainConfig(out=str(tmp_path / f"single-{name}"), optimizer=name,
                                   **extra, **TINY))
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        for key, value in single.model.state_dict().items():
            assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), (name, key)
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{name}: {key}")
        for parallel, alone in zip(ranks[0]["metrics"], single.metrics):
            assert parallel["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-9)
            assert parallel["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-4)
        written = json.loads((tmp_path / name / "config.json").read_text())
        assert written["world_size"] == 2
        assert len((tmp_path / name / "metrics.jsonl").read_text().splitlines()) == TINY["epochs"]


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_launches_the_module(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "sdesam.train",
               "--optimizer", "rw-sam", "--local-perturbation", "--epochs", "1", "--out",
               str(tmp_path), "--synthetic-train", "128", "--synthetic-test", "64",
               "--batch-size", "32", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and record["step"] == 4
