"""Exact per-sample gradients of an ``nn.Module`` and the statistics built on them.

The gradient of every sample's loss is computed with ``torch.func`` (``functional_call`` +
``vmap(grad)``), in chunks of samples so that the intermediate activations fit in memory.
A per-sample gradient is only defined when the samples of a batch do not interact, so the
model is evaluated in **eval mode** here: BatchNorm normalises with its running statistics
(which are left untouched) and dropout is off. The model's train/eval flags are restored on
return.

Used by the RW-SAM estimator tests (exact norms against the finite-difference estimate), by
the trainer (the gradient-noise trace ``tr V`` on a fixed probe batch) and by the SGN figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sdesam.validation import InputError, positive_int

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 64


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``model`` that require grad, by name, in ``named_parameters`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def sample_loss(model: nn.Module, loss_fn: LossFn, params: dict[str, torch.Tensor],
                constants: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The 0-dim loss of one sample ``(x, y)`` (no batch dimension) under ``params`` and
    ``constants`` (frozen parameters and buffers), evaluated as a batch of one: the function
    whose ``vmap(grad)`` over samples gives per-sample gradients at a cost linear in the batch."""
    outputs = functional_call(model, (params, constants), (x.unsqueeze(0),))
    return loss_fn(outputs, y.unsqueeze(0)).reshape(())


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Exact gradients of each sample's loss, flattened to ``[B, P]`` (P = trainable parameters).

    ``loss_fn(outputs, targets)`` returns per-sample losses ``[B]``. Parameters are flattened
    in ``named_parameters`` order. Evaluated in eval mode (see the module docstring).
    """
    return torch.cat(list(_grad_chunks(model, loss_fn, inputs, targets, chunk_size)), dim=0)


def per_sample_grad_norms(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Euclidean norms ``[B]`` of the exact per-sample gradients, one chunk in memory at a time."""
    norms = [chunk.norm(dim=1) for chunk in _grad_chunks(model, loss_fn, inputs, targets, chunk_size)]
    return torch.cat(norms)


def gradient_noise_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """tr V on the batch: ``mean_i |g_i|^2 - |mean_i g_i|^2`` with ``g_i`` the per-sample gradients.

    V is the per-sample gradient-noise covariance ``(1/B) sum_i (g_i - g)(g_i - g)^T`` of the
    batch; its trace is accumulated chunk by chunk (in float64, to keep the difference of two
    close numbers accurate) without forming V or keeping all per-sample gradients. Returns a
    0-dim float64 tensor.
    """
    count = 0
    square_sum = None
    grad_sum = None
    for chunk in _grad_chunks(model, loss_fn, inputs, targets, chunk_size):
        chunk = chunk.double()
        count += chunk.shape[0]
        squares = chunk.pow(2).sum()
        total = chunk.sum(dim=0)
        square_sum = squares if square_sum is None else square_sum + squares
        grad_sum = total if grad_sum is None else grad_sum + total
    mean = grad_sum / count
    return square_sum / count - mean.pow(2).sum()


def _grad_chunks(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> Iterator[torch.Tensor]:
    """Yield the flattened per-sample gradients ``[b, P]`` of consecutive chunks of the batch."""
    _check_batch(inputs, targets, chunk_size)
    params = {name: p.detach() for name, p in trainable_parameters(model).items()}
    if not params:
        raise InputError("model has no parameter that requires grad")
    constants = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    constants.update(dict(model.named_buffers()))

    def loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sample_loss(model, loss_fn, theta, constants, x, y)

    batched = vmap(grad(loss), in_dims=(None, 0, 0))
    with _eval_mode(model):
        for start in range(0, inputs.shape[0], chunk_size):
            stop = start + chunk_size
            grads = batched(params, inputs[start:stop], targets[start:stop])
            yield torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def _check_batch(inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> None:
    """Raise a ValueError for an empty or mismatched batch or a bad chunk size."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise InputError("inputs and targets must be tensors")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InputError(f"inputs must hold at least one sample; got shape {tuple(inputs.shape)}")
    if targets.ndim == 0 or targets.shape[0] != inputs.shape[0]:
        raise InputError(
            f"targets must have one entry per input; got {tuple(targets.shape)} for "
            f"{inputs.shape[0]} inputs"
        )
    positive_int("chunk_size", chunk_size)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration, then restore every submodule's flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
