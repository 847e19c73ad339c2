"""The forward/backward passes every rule is made of: BatchNorm policy, DDP, autocast, chunks.

A rule step is a few passes over the batch (first pass at x, maybe a probe, an ascent, a
descent at the perturbed point). This module holds what they share:

* the BatchNorm policy: ``"first-pass"`` (running statistics are updated by the first,
  unperturbed forward of each step and by no other pass) or ``"freeze"`` (no pass of the
  optimizer updates them). Inside a frozen pass BatchNorm layers in train mode still
  normalise with the statistics of the batch they see; only the running averages are kept.
* DistributedDataParallel: the module inside it for functional passes, and ``no_sync`` for
  passes whose gradient must stay local;
* autocast for the forward passes, and the split of a batch into accumulation chunks;
* the finiteness check of a step's loss (agreed by every process under DDP) and the snapshot
  of the running statistics that lets a refused step leave the model as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from sdesam.validation import InputError

BN_POLICIES: tuple[str, ...] = ("first-pass", "freeze")
"""The accepted values of every rule's ``bn`` keyword."""

AUTOCAST_DTYPES: tuple[torch.dtype | None, ...] = (None, torch.bfloat16, torch.float16)
"""The accepted values of every rule's ``autocast_dtype`` keyword."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_batch(model: object, loss_fn: object, inputs: object, targets: object) -> int:
    """Validate the arguments of a model-based step; return the batch size."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise InputError("loss_fn must be callable: loss_fn(outputs, targets) -> per-sample losses [B]")
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise InputError("inputs and targets must be tensors")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InputError(f"inputs must hold at least one sample; got shape {tuple(inputs.shape)}")
    if targets.ndim == 0 or targets.shape[0] != inputs.shape[0]:
        raise InputError(
            f"targets must have one entry per input; got {tuple(targets.shape)} for "
            f"{inputs.shape[0]} inputs"
        )
    return inputs.shape[0]


def check_micro_chunks(batch: int, accumulate: int, micro: int) -> None:
    """micro-batches must not straddle accumulation chunks: ``micro`` divides ``batch/accumulate``
    (unless one micro-batch is the whole batch)."""
    chunk = batch // accumulate
    if micro != batch and chunk % micro:
        raise InputError(f"micro must divide the accumulation chunk batch/accumulate={chunk}; "
                         f"got micro={micro}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and ``torch.compile`` wrappers (either order)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def is_distributed(model: nn.Module) -> bool:
    """True when ``model`` is a DistributedDataParallel (possibly inside ``torch.compile``)."""
    return isinstance(getattr(model, "_orig_mod", model), DistributedDataParallel)


def sync_context(model: nn.Module, sync: bool) -> AbstractContextManager:
    """``model.no_sync()`` when ``model`` is DDP and the gradient must stay local, else nothing."""
    ddp = getattr(model, "_orig_mod", model)
    if not sync and isinstance(ddp, DistributedDataParallel):
        return ddp.no_sync()
    return nullcontext()


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def running_stats_frozen(model: nn.Module, frozen: bool = True) -> Iterator[None]:
    """Inside, BatchNorm layers do not update their running statistics (when ``frozen``).

    Layers in train mode keep normalising with batch statistics; eval-mode layers keep using
    the running ones. Implemented by switching ``track_running_stats`` off for the duration,
    which also leaves ``num_batches_tracked`` untouched.
    """
    layers = batch_norms(model) if frozen else []
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


def running_stats_snapshot(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every BatchNorm running statistic of ``model``, for :func:`restore`."""
    return [(buffer, buffer.clone()) for layer in batch_norms(model) for buffer in layer.buffers()]


@torch.no_grad()
def restore(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy the values of a :func:`running_stats_snapshot` back into their buffers."""
    for buffer, saved in snapshot:
        buffer.copy_(saved)


def finite_everywhere(value: torch.Tensor, model: nn.Module | None) -> bool:
    """Whether ``value`` is finite on this process and, when ``model`` is DDP-wrapped, on every
    process (one all-reduce of a flag, so that all of them take or refuse the step together)."""
    bad = (~torch.isfinite(value)).any().to(torch.float32)
    if is_distributed(model) and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def split(inputs: torch.Tensor, targets: torch.Tensor, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch as ``count`` equal consecutive chunks (count divides the batch size)."""
    return list(zip(inputs.chunk(count), targets.chunk(count)))


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is float16/bfloat16, unchanged otherwise (float64 stays)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def forward_losses(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs and per-sample losses ``[b]``; a ValueError if loss_fn does not reduce per sample."""
    outputs = model(inputs)
    losses = loss_fn(outputs, targets)
    if not isinstance(losses, torch.Tensor) or losses.shape != (inputs.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn must return per-sample losses of shape [{inputs.shape[0]}] "
            f"(reduction='none'); got {shape}"
        )
    return outputs, losses
