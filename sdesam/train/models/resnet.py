"""ResNet-18 and ResNet-50 for 32x32 inputs (3x3 stem, no max-pool), as used in the SAM papers."""

from __future__ import annotations

import torch
from torch import nn

from sdesam.train.models.norm import norm_layer


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution with padding 1."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _shortcut(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module:
    """Identity, or a strided 1x1 projection when the shape changes."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, width, stride), norm_layer(norm, width)
        self.conv2, self.bn2 = _conv3x3(width, width), norm_layer(norm, width)
        self.shortcut = _shortcut(c_in, width, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn(conv(relu(bn(conv x)))) + shortcut(x))."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), norm_layer(norm, width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride), norm_layer(norm, width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), norm_layer(norm, c_out)
        self.shortcut = _shortcut(c_in, c_out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck residual block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem with 64 channels, four stages (64, 128, 256, 512 wide), pooling, head."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...],
                 num_classes: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(3, 64), norm_layer(norm, 64)
        stages, c_in = [], 64
        for index, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for b in range(depth):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(block(c_in, width, stride, norm))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.linear(out.mean(dim=(2, 3)))


def resnet18(num_classes: int = 10, norm: str = "bn") -> ResNet:
    """CIFAR ResNet-18 (about 11.2 M parameters)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, norm)


def resnet50(num_classes: int = 10, norm: str = "bn") -> ResNet:
    """CIFAR ResNet-50 (about 23.5 M parameters)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, norm)
