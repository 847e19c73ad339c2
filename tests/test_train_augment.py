"""Batched crop + flip against a per-image reference, and normalisation by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdesam.train.augment import crop_flip, draw_crop_flip, normalize


def _reference(image, dy, dx, flip, padding):
    """One image: zero-pad, cut the window at (dy, dx), mirror left-right if asked."""
    padded = F.pad(image, (padding,) * 4)
    out = padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]
    return out.flip(-1) if flip else out


def test_batched_crop_flip_equals_the_per_image_reference():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    dy, dx, flips = draw_crop_flip(16, 4, generator)
    assert dy.min() >= 0 and dy.max() <= 8 and flips.any() and not flips.all()
    out = crop_flip(images, dy, dx, flips, padding=4)
    for b in range(16):
        assert torch.equal(out[b], _reference(images[b], int(dy[b]), int(dx[b]), bool(flips[b]), 4))


def test_centre_crop_without_flip_is_the_identity_and_shift_moves_pixels():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    centre = torch.full((2,), 2)
    same = crop_flip(images, centre, centre, torch.tensor([False, False]), padding=2)
    assert torch.equal(same, images)
    shifted = crop_flip(images, centre, torch.tensor([3, 3]), torch.tensor([False, True]), 2)
    assert torch.equal(shifted[0, :, :, :-1], images[0, :, :, 1:])  # window moved right by one
    assert torch.all(shifted[0, :, :, -1] == 0)                     # zero padding enters
    assert torch.equal(shifted[1], _reference(images[1], 2, 3, True, 2))


def test_normalize_by_hand():
    images = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.2, 0.0]), torch.tensor([0.5, 0.1, 2.0])
    out = normalize(images, mean, std)
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]], [[0.5, 0.0]]]])
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
