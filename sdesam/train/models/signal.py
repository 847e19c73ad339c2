"""The two small networks of the MNIST-1D benchmark, for 1-D signals (and flattened digits).

``cnn1d``: three 1-D convolutions (25 channels; kernel 5 then 3, 3; stride 2; padding 1;
ReLU after each) and a linear head on the flattened features -- 5,210 parameters on signals
of length 40. ``mlp1d``: two hidden layers of 100 ReLU units -- 15,210 parameters on length 40
(17,610 on the 64 pixels of an 8x8 digit). Both have no normalisation layers, so the
per-sample losses of a batch are independent (what m-SAM at m = 1 and RW-SAM's per-sample
gradient norms assume). Inputs are ``[B, 1, L]`` signals or ``[B, C, H, W]`` images; the MLP
flattens whatever it gets, the CNN treats the flattened input as a one-channel signal.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a 1-D convolution."""
    return (length + 2 * padding - kernel) // stride + 1


class SignalCNN(nn.Module):
    """The MNIST-1D benchmark's small CNN for signals of ``length`` samples."""

    def __init__(self, length: int, num_classes: int = 10, channels: int = 25) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        inputs = 1
        for kernel in (5, 3, 3):
            layers += [nn.Conv1d(inputs, channels, kernel, stride=2, padding=1), nn.ReLU()]
            inputs = channels
            length = _conv_length(length, kernel, 2, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of inputs [B, ...] (flattened to one channel)."""
        return self.head(self.features(x.reshape(len(x), 1, -1)).flatten(1))


class SignalMLP(nn.Module):
    """The MNIST-1D benchmark's MLP: ``in_features -> hidden -> hidden -> num_classes``."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 100) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of inputs [B, ...] (flattened)."""
        return self.layers(x.flatten(1))
