"""The container every data set is loaded into (:class:`ImageDataset`) and its per-channel
statistics: what the loaders of :mod:`sdesam.train.data` (CIFAR, synthetic) and
:mod:`sdesam.train.cpu_data` (MNIST-1D, digits) share, so neither imports the other's module
for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ImageDataset:
    """Train and test inputs and labels (int64) on one device.

    Inputs are uint8 images [N, 3, H, W] or float32 arrays [N, C, ...] (signals, digits).
    ``mean``/``std`` are the per-channel statistics of the training inputs (uint8 scaled to
    [0, 1]); :func:`sdesam.train.augment.normalize` uses them. ``val_images``/``val_labels``:
    the validation split carved from the training data (None without one); ``flipped``: the
    indices into the training split whose labels label noise replaced (None without noise);
    ``val_clean_labels``: the validation split's true labels when its ``val_labels`` carry
    label noise too (None otherwise), so a run can report both accuracies; ``info``: how the data were made (generator arguments, checksum, split), for config.json.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    flipped: torch.Tensor | None = None
    val_clean_labels: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "ImageDataset":
        """The same data set with every tensor moved to ``device``."""
        moved = {key: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for key, value in self.__dict__.items()}
        return ImageDataset(**moved)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input: (channels, height, width) of an image, (1, length) of a signal."""
        return tuple(self.train_images.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether the inputs are uint8 images (what crop-and-flip augmentation applies to)."""
        return self.train_images.dtype == torch.uint8 and self.train_images.ndim == 4


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of inputs [N, C, ...]: uint8 images scaled to
    [0, 1], float inputs as they are."""
    values = images.to(torch.float64)
    if images.dtype == torch.uint8:
        values = values.div_(255)
    values = values.transpose(0, 1).reshape(images.shape[1], -1)
    return values.mean(dim=1).float(), values.std(dim=1).float()
