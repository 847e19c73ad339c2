"""Batched data augmentation on the training device: random crop with padding and horizontal flip.

The crop offsets and flips of a whole batch are drawn at once and applied with one gather
(crop and flip are both index maps), followed by normalisation: no per-image Python work, and
the same code runs on CPU and CUDA. The random draws come from a CPU ``torch.Generator``, so a
batch is augmented identically on every device and in a resumed run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
              flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each zero-padded image at (offsets_y[b], offsets_x[b]) and mirror those with flips[b].

    ``images``: [B, C, H, W] (any dtype); offsets in ``[0, 2 * padding]``; returns [B, C, H, W].
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    offsets_y, offsets_x, flips = (t.to(device) for t in (offsets_y, offsets_x, flips))
    rows = offsets_y[:, None] + torch.arange(height, device=device)
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = offsets_x[:, None] + torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(batch, device=device)[:, None, None, None],
                  torch.arange(channels, device=device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def draw_crop_flip(batch: int, padding: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (uniform in [0, 2 * padding]) and flips (probability 1/2) for a batch."""
    offsets_y = torch.randint(2 * padding + 1, (batch,), generator=generator)
    offsets_x = torch.randint(2 * padding + 1, (batch,), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    return offsets_y, offsets_x, flips


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              channels_last: bool = False) -> torch.Tensor:
    """Inputs [B, C, ...] to float32 ``(x - mean) / std`` per channel; uint8 images are first
    scaled to [0, 1] (``x / 255``), float inputs (signals, digits) are taken as they are."""
    out = images.to(torch.float32, copy=True)
    if images.dtype == torch.uint8:
        out = out.div_(255)
    shape = (-1,) + (1,) * (images.ndim - 2)
    out = out.sub_(mean.to(images.device).view(shape)).div_(std.to(images.device).view(shape))
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
