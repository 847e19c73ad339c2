"""Wide residual networks (Zagoruyko & Komodakis 2016) for 32x32 inputs: WRN-28-10."""

from __future__ import annotations

import torch
from torch import nn

from sdesam.train.models.norm import norm_layer
from sdesam.validation import InputError


class WideBlock(nn.Module):
    """Pre-activation block: norm-ReLU-conv3x3, norm-ReLU-conv3x3, plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.bn1 = norm_layer(norm, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation residual block."""
        out = torch.relu(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k: a 16-channel stem, three stages of (depth - 4) / 6 blocks, widths 16k/32k/64k."""

    def __init__(self, depth: int, widen: int, num_classes: int, norm: str = "bn",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise InputError(f"depth must be 6n + 4; got {depth}")
        blocks_per_stage = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        stages, c_in = [], 16
        for index, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(WideBlock(c_in, width, stride, norm, dropout))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = norm_layer(norm, c_in)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        out = torch.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(out.mean(dim=(2, 3)))


def wide_resnet(depth: int = 28, widen: int = 10, num_classes: int = 10, norm: str = "bn",
                dropout: float = 0.0) -> WideResNet:
    """WRN-``depth``-``widen`` (WRN-28-10: about 36.5 M parameters)."""
    return WideResNet(depth, widen, num_classes, norm, dropout)
