"""The normalisation layer of a convolutional block, chosen by name."""

from __future__ import annotations

from torch import nn

from sdesam.validation import InputError

NORMS: tuple[str, ...] = ("bn", "gn", "none")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d ("bn"), GroupNorm with up to 32 groups of at least 4 channels ("gn"), or
    identity ("none") over ``channels`` feature maps."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise InputError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
