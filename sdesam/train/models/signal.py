"""The two small networks of the MNIST-1D benchmark, for 1-D signals (and flattened digits).

``cnn1d``: three 1-D convolutions (25 channels; kernel 5 then 3, 3; stride 2; padding 1;
ReLU after each) and a linear head on the flattened features -- 5,210 parameters on signals
of length 40. ``mlp1d``: two hidden layers of 100 ReLU units -- 15,210 parameters on length 40
(17,610 on the 64 pixels of an 8x8 digit). Inputs are ``[B, 1, L]`` signals or
``[B, C, H, W]`` images; the MLP flattens whatever it gets, the CNN treats the flattened input
as a one-channel signal.

By default both have no normalisation layers, so the per-sample losses of a batch are
independent (what m-SAM at m = 1 and RW-SAM's per-sample gradient norms assume). With
``norm="bn"`` a BatchNorm1d follows each convolution / hidden layer, before its ReLU -- the
networks of the paper all use BatchNorm, and in train mode its statistics are those of the
batch a pass sees, so m-SAM's ascent pass normalises each micro-batch by its own statistics
(as on CIFAR) and the per-sample losses are coupled through the batch statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from sdesam.validation import InputError


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a 1-D convolution."""
    return (length + 2 * padding - kernel) // stride + 1


SIGNAL_NORMS: tuple[str, ...] = ("none", "bn")
"""The normalisations the signal models offer."""


def _signal_norm(norm: str, features: int) -> list[nn.Module]:
    """The layers that normalise ``features`` channels: none, or a BatchNorm1d."""
    if norm not in SIGNAL_NORMS:
        raise InputError(f"norm for the signal models must be one of {', '.join(SIGNAL_NORMS)}; "
                         f"got {norm!r}")
    return [nn.BatchNorm1d(features)] if norm == "bn" else []


class SignalCNN(nn.Module):
    """The MNIST-1D benchmark's small CNN for signals of ``length`` samples (``norm="bn"``: a
    BatchNorm1d after each convolution)."""

    def __init__(self, length: int, num_classes: int = 10, channels: int = 25,
                 norm: str = "none") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        inputs = 1
        for kernel in (5, 3, 3):
            layers += [nn.Conv1d(inputs, channels, kernel, stride=2, padding=1),
                       *_signal_norm(norm, channels), nn.ReLU()]
            inputs = channels
            length = _conv_length(length, kernel, 2, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of inputs [B, ...] (flattened to one channel)."""
        return self.head(self.features(x.reshape(len(x), 1, -1)).flatten(1))


class SignalMLP(nn.Module):
    """The MNIST-1D benchmark's MLP: ``in_features -> hidden -> hidden -> num_classes``
    (``norm="bn"``: a BatchNorm1d after each hidden layer)."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 100,
                 norm: str = "none") -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), *_signal_norm(norm, hidden),
                                    nn.ReLU(), nn.Linear(hidden, hidden),
                                    *_signal_norm(norm, hidden), nn.ReLU(),
                                    nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] of inputs [B, ...] (flattened)."""
        return self.layers(x.flatten(1))
