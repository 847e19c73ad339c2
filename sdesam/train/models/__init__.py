"""Networks built by name: :func:`build_model`.

For 1-D signals (MNIST-1D) and flattened 8x8 digits: ``cnn1d`` and ``mlp1d``, the small CNN
(5,210 parameters on length 40) and MLP (15,210) of the MNIST-1D benchmark. For CIFAR-shaped
images: ``small`` (a fast CNN for CPU demos and tests), ``resnet18`` / ``resnet50`` (the CIFAR
variants: 3x3 stem, no max-pool), ``wrn28-10`` (WideResNet-28-10) and ``vit`` (a Vision
Transformer for fine-tuning from a local checkpoint). The ResNets take ``norm="bn"`` or
``norm="gn"``: BatchNorm statistics over an m-sized micro-batch change with m and confound the
m-sharpness effect, and in train mode they couple the per-sample losses RW-SAM estimates
gradient norms from; GroupNorm has neither problem.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from sdesam.train.models.norm import NORMS, norm_layer
from sdesam.train.models.resnet import resnet18, resnet50
from sdesam.train.models.signal import SIGNAL_NORMS, SignalCNN, SignalMLP
from sdesam.train.models.small import SmallCNN
from sdesam.train.models.vit import VisionTransformer, load_vit
from sdesam.train.models.wrn import wide_resnet
from sdesam.validation import InputError, int_at_least

MODELS: tuple[str, ...] = ("small", "resnet18", "resnet50", "wrn28-10", "vit", "cnn1d", "mlp1d")

SIGNAL_MODELS: tuple[str, ...] = ("cnn1d", "mlp1d")
"""The models that take any input shape (flattened); no normalisation layers unless
``norm="bn"`` is asked for."""

# the normalisation each model uses when none is asked for
DEFAULT_NORM: dict[str, str] = {"small": "none", "resnet18": "bn", "resnet50": "bn",
                                "wrn28-10": "bn", "vit": "ln", "cnn1d": "none", "mlp1d": "none"}

DEFAULT_MODEL: dict[str, str] = {"mnist1d": "cnn1d", "digits": "mlp1d"}
"""The model a data set is trained with when none is named (``small`` for the image sets)."""


def default_model(dataset: str) -> str:
    """The model that fits ``dataset`` when the user names none."""
    return DEFAULT_MODEL.get(dataset, "small")


def build_model(name: str, num_classes: int, norm: str | None = None,
                checkpoint: str | Path | None = None,
                input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """The network ``name`` with ``num_classes`` outputs for inputs of ``input_shape``
    (used by cnn1d / mlp1d, which flatten their input; the image models expect 3x32x32).

    ``norm``: "bn", "gn" or "none" (``None``: the model's default, :data:`DEFAULT_NORM`).
    ``checkpoint``: for ``vit`` only, a local file with pretrained weights (required for vit;
    its classification head is replaced by a fresh one with ``num_classes`` outputs).
    """
    if name not in MODELS:
        raise InputError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    int_at_least("num_classes", num_classes, 2)
    if name == "vit":
        if norm not in (None, "ln"):
            raise InputError(f"norm for vit is its LayerNorm; leave it out (got norm={norm!r})")
        if checkpoint is None:
            raise InputError("model vit needs checkpoint: a local file of pretrained weights "
                             "(nothing is downloaded)")
        return load_vit(checkpoint, num_classes)
    if checkpoint is not None:
        raise InputError(f"checkpoint is only used by model vit, not {name!r}")
    norm = DEFAULT_NORM[name] if norm is None else norm
    if name in SIGNAL_MODELS:
        if norm not in SIGNAL_NORMS:
            raise InputError(f"norm for model {name} must be one of {', '.join(SIGNAL_NORMS)}; "
                             f"got {norm!r}")
        model = SignalCNN if name == "cnn1d" else SignalMLP
        return model(math.prod(input_shape), num_classes, norm=norm)
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if name == "small":
        return SmallCNN(num_classes, norm)
    if name == "resnet18":
        return resnet18(num_classes, norm)
    if name == "resnet50":
        return resnet50(num_classes, norm)
    return wide_resnet(28, 10, num_classes, norm)


__all__ = ["MODELS", "SIGNAL_MODELS", "DEFAULT_MODEL", "DEFAULT_NORM", "NORMS", "build_model",
           "default_model", "norm_layer", "SIGNAL_NORMS", "SignalCNN", "SignalMLP", "SmallCNN", "resnet18",
           "resnet50", "wide_resnet", "VisionTransformer", "load_vit"]
