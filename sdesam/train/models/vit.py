"""A Vision Transformer for fine-tuning on CIFAR from a local checkpoint.

Parameter names follow the layout most published ViT checkpoints use (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``,
``norm``, ``head``), so such a state dict loads directly. CIFAR images are resized on the fly
to the checkpoint's resolution (224 for ViT-B/16), the usual fine-tuning protocol.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdesam.validation import InputError


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"heads must divide dim; got dim={dim}, heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of x [B, T, dim]."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """fc1 - GELU - fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The token-wise feed-forward network."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attn(norm1 x), then + mlp(norm2 x)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to tokens by a strided convolution."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, (H/p)(W/p), dim] of images [B, 3, H, W]."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT with a class token and learned position embeddings; inputs of another size are
    resized (bilinear) to ``image_size``."""

    def __init__(self, num_classes: int, image_size: int = 224, patch_size: int = 16,
                 dim: int = 768, depth: int = 12, heads: int = 12, mlp_dim: int = 3072) -> None:
        super().__init__()
        if image_size % patch_size:
            raise InputError(f"patch_size must divide image_size; got {patch_size}, {image_size}")
        self.image_size = image_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        tokens = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_config_from_state(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Architecture of a ViT state dict read off its tensor shapes (heads = dim / 64, the
    convention of ViT-Ti/S/B/L; give ``config`` in the checkpoint otherwise)."""
    try:
        proj = state["patch_embed.proj.weight"]
        tokens = state["pos_embed"].shape[1] - 1
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise InputError(f"checkpoint is not a ViT state dict: no entry {missing}") from None
    dim, patch = proj.shape[0], proj.shape[-1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise InputError(f"checkpoint pos_embed has {tokens} patch tokens, not a square grid")
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    return {"image_size": grid * patch, "patch_size": patch, "dim": dim, "depth": depth,
            "heads": max(1, dim // 64), "mlp_dim": mlp_dim}


def load_vit(path: str | Path, num_classes: int) -> VisionTransformer:
    """A ViT with the pretrained weights in ``path`` and a fresh zero-initialised head.

    ``path`` holds (``torch.save``) either a state dict or ``{"state_dict": ..., "config":
    {image_size, patch_size, dim, depth, heads, mlp_dim}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist (ViT weights are read from a "
                         f"local file; nothing is downloaded)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved.get("state_dict", saved.get("model", saved))
    config = saved.get("config") or vit_config_from_state(state)
    model = VisionTransformer(num_classes, **config)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise InputError(f"checkpoint {str(path)!r} does not fit the ViT layout: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model
