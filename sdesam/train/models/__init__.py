"""Networks for CIFAR-shaped inputs, built by name: :func:`build_model`.

``small`` (a fast CNN for CPU demos and tests), ``resnet18`` / ``resnet50`` (the CIFAR
variants: 3x3 stem, no max-pool), ``wrn28-10`` (WideResNet-28-10) and ``vit`` (a Vision
Transformer for fine-tuning from a local checkpoint). The ResNets take ``norm="bn"`` or
``norm="gn"``: BatchNorm statistics over an m-sized micro-batch change with m and confound the
m-sharpness effect, and in train mode they couple the per-sample losses RW-SAM estimates
gradient norms from; GroupNorm has neither problem.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sdesam.train.models.norm import NORMS, norm_layer
from sdesam.train.models.resnet import resnet18, resnet50
from sdesam.train.models.small import SmallCNN
from sdesam.train.models.vit import VisionTransformer, load_vit
from sdesam.train.models.wrn import wide_resnet

MODELS: tuple[str, ...] = ("small", "resnet18", "resnet50", "wrn28-10", "vit")

# the normalisation each model uses when none is asked for
DEFAULT_NORM: dict[str, str] = {"small": "none", "resnet18": "bn", "resnet50": "bn",
                                "wrn28-10": "bn", "vit": "ln"}


def build_model(name: str, num_classes: int, norm: str | None = None,
                checkpoint: str | Path | None = None) -> nn.Module:
    """The network ``name`` with ``num_classes`` outputs.

    ``norm``: "bn", "gn" or "none" (``None``: the model's default, :data:`DEFAULT_NORM`).
    ``checkpoint``: for ``vit`` only, a local file with pretrained weights (required for vit;
    its classification head is replaced by a fresh one with ``num_classes`` outputs).
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    if name == "vit":
        if norm not in (None, "ln"):
            raise ValueError(f"norm for vit is its LayerNorm; leave it out (got norm={norm!r})")
        if checkpoint is None:
            raise ValueError("model vit needs checkpoint: a local file of pretrained weights "
                             "(nothing is downloaded)")
        return load_vit(checkpoint, num_classes)
    if checkpoint is not None:
        raise ValueError(f"checkpoint is only used by model vit, not {name!r}")
    norm = DEFAULT_NORM[name] if norm is None else norm
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if name == "small":
        return SmallCNN(num_classes, norm)
    if name == "resnet18":
        return resnet18(num_classes, norm)
    if name == "resnet50":
        return resnet50(num_classes, norm)
    return wide_resnet(28, 10, num_classes, norm)


__all__ = ["MODELS", "DEFAULT_NORM", "NORMS", "build_model", "norm_layer", "SmallCNN", "resnet18",
           "resnet50", "wide_resnet", "VisionTransformer", "load_vit"]
