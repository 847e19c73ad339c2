"""Data-parallel training with PyTorch's DistributedDataParallel, configured from torchrun.

``torchrun --nproc_per_node K -m sdesam.train ...`` sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; :func:`init_distributed` reads them, starts the process group
(NCCL on CUDA, gloo on CPU) and picks this process's device. Each rank processes an equal,
contiguous part of every global batch (:func:`sdesam.train.data.shard`); rank 0 alone logs
and writes files. The SAM-family semantics under DDP (global perturbation for SAM, local
ascent under ``no_sync`` for m-SAM and local RW-SAM) live in :mod:`sdesam.optim`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from sdesam.validation import InputError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; ``owns_group``: the process group was started here
    (and is therefore shut down here)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """``device`` ("cpu", "cuda" or "cuda:N") as a torch.device, checked to exist."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be cpu, cuda or cuda:N; got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu, cuda or cuda:N; got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def init_distributed(device: str) -> tuple[DistributedContext, torch.device]:
    """Join the process group described by the torchrun environment (if WORLD_SIZE > 1).

    Returns the context and this process's device (``cuda:LOCAL_RANK`` when ``device`` is
    CUDA). A process group that is already initialised is used as it is.
    """
    resolved = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        world, rank, owns = dist.get_world_size(), dist.get_rank(), False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistributedContext(), resolved
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        rank, owns = dist.get_rank(), True
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    return DistributedContext(rank, world, local_rank, owns), resolved


def wrap_model(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel when several processes take part, else as is."""
    if not context.is_distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op for a single process); returns it."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(context: DistributedContext) -> None:
    """Wait until every rank arrives (a no-op for a single process)."""
    if context.is_distributed:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
