"""A small, fast CNN for CPU demos, tests and examples (about 0.1 M parameters)."""

from __future__ import annotations

import torch
from torch import nn

from sdesam.train.models.norm import norm_layer


class SmallCNN(nn.Module):
    """Three conv-norm-ReLU-pool stages (32, 64, 128 channels), global pooling, a linear head.

    With ``norm="none"`` (the default of ``build_model``) the per-sample losses of a batch are
    independent even in train mode, which RW-SAM's per-sample norm estimate assumes.
    """

    def __init__(self, num_classes: int = 10, norm: str = "none", width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=norm == "none"),
                       norm_layer(norm, out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of images [B, 3, H, W]."""
        return self.head(self.features(x).mean(dim=(2, 3)))
