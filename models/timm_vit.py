"""A Vision Transformer in timm's parameter layout, for OpenVLA's Prismatic checkpoints.

OpenVLA stores its vision encoders (DINOv2 ViT-L/14 with 4 registers, SigLIP
ViT-SO400M/14) as timm ``VisionTransformer`` state dicts, with one rename: Prismatic
patches timm's ``LayerScale.gamma`` to ``scale_factor`` (transformers rewrote parameters
named ``gamma``). This module rebuilds that network with plain torch under the same names,
so the checkpoint loads strictly and peft LoRA adapters find the same module names
(``blocks.N.attn.qkv``, ``mlp.fc1``...), without timm (whose import needs torchvision).

The architecture is read off the weights (:meth:`ViTSpec.from_shapes`); only the
head count, which no shape reveals, comes from the timm model id. Prismatic reads the
output of the second-to-last block without the final norm and without prefix tokens
(``get_intermediate_layers(n={depth - 2})``): :meth:`TimmViT.forward` does the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

# Heads by timm model family: shapes give the width, not how it is split.
HEADS_BY_FAMILY = {"vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16,
                   "vit_so400m": 16, "vit_giant": 24, "vit_gigantic": 16}
ACTIVATIONS = {None: nn.GELU, "gelu": nn.GELU,
               "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
               "quick_gelu": lambda: _QuickGELU()}
UNUSED_PREFIXES = ("head.", "fc_norm.")  # Identity in Prismatic's featurizers


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@dataclass(frozen=True)
class ViTSpec:
    """What a timm ViT's weights say about it (plus heads and activation)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    grid: int  # patches per side
    mlp_hidden: int
    class_token: bool
    reg_tokens: int
    embed_prefix: bool  # pos_embed covers the prefix tokens too (timm's not no_embed_class)
    layer_scale: bool
    pre_norm: bool
    qkv_bias: bool
    attn_pool_mlp: int  # SigLIP's MAP head width (0: none); built, never run
    act: Optional[str] = None

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, if any, and the registers."""
        return int(self.class_token) + self.reg_tokens

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], model_id: str, image_size: int,
                    act: Optional[str] = None) -> "ViTSpec":
        """The spec of the timm ViT ``model_id`` whose weights have these shapes (keys
        as :func:`timm_key` names them)."""
        family = next((f for f in sorted(HEADS_BY_FAMILY, key=len, reverse=True)
                       if model_id.startswith(f + "_")), None)
        if family is None:
            raise ValueError(f"timm model id {model_id!r}: chunkrl knows the ViT families "
                             f"{sorted(HEADS_BY_FAMILY)}")
        if act not in ACTIVATIONS:
            raise ValueError(f"timm activation override {act!r}: one of "
                             f"{[a for a in ACTIVATIONS if a]} or null")
        width, _, patch, _ = shapes["patch_embed.proj.weight"]
        depth = 1 + max(int(m.group(1)) for k in shapes
                        if (m := re.match(r"blocks\.(\d+)\.", k)))
        grid = image_size // patch
        reg = shapes["reg_token"][1] if "reg_token" in shapes else 0
        prefix = int("cls_token" in shapes) + reg
        positions = shapes["pos_embed"][1]
        if positions not in (grid * grid, grid * grid + prefix):
            raise ValueError(f"{model_id}: pos_embed has {positions} positions but "
                             f"{image_size}px images in {patch}px patches make {grid * grid}")
        return cls(embed_dim=width, depth=depth, num_heads=HEADS_BY_FAMILY[family],
                   patch_size=patch, grid=grid,
                   mlp_hidden=shapes["blocks.0.mlp.fc1.weight"][0],
                   class_token="cls_token" in shapes, reg_tokens=reg,
                   embed_prefix=positions != grid * grid and prefix > 0,
                   layer_scale=any(k.startswith("blocks.0.ls1.") for k in shapes),
                   pre_norm="norm_pre.weight" in shapes,
                   qkv_bias="blocks.0.attn.qkv.bias" in shapes,
                   attn_pool_mlp=(shapes["attn_pool.mlp.fc1.weight"][0]
                                  if "attn_pool.mlp.fc1.weight" in shapes else 0),
                   act=act)


class LayerScale(nn.Module):
    """timm's LayerScale under Prismatic's parameter name."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    """timm's two-layer MLP: ``fc1``, the activation, ``fc2``."""
    def __init__(self, dim: int, hidden: int, act: Optional[str]):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), ACTIVATIONS[act](), \
            nn.Linear(hidden, dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """timm's multi-head self-attention: one ``qkv`` projection, then ``proj``."""
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads) \
            .permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
                         .reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        d = spec.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, spec.num_heads, spec.qkv_bias)
        self.mlp = Mlp(d, spec.mlp_hidden, spec.act)
        self.ls1 = LayerScale(d) if spec.layer_scale else nn.Identity()
        self.ls2 = LayerScale(d) if spec.layer_scale else nn.Identity()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """timm's MAP head of SigLIP, kept so that its weights (and LoRA adapters trained
    with ``all-linear``, which wrap it) load; Prismatic never runs it."""

    def __init__(self, dim: int, mlp_hidden: int, latent_len: int = 1):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, latent_len, dim))
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), \
            nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden, None)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens [B, grid*grid, D] (a strided convolution)."""
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, spec.patch_size, stride=spec.patch_size)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    """The featurizer: patch tokens of the second-to-last block, [B, grid*grid, D]."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec, d = spec, spec.embed_dim
        self.patch_embed = PatchEmbed(spec)
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if spec.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, d))
        positions = spec.grid ** 2 + (spec.num_prefix_tokens if spec.embed_prefix else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, d))
        self.norm_pre = nn.LayerNorm(d, eps=1e-6) if spec.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)  # the final norm: loaded, not applied
        if spec.attn_pool_mlp:
            self.attn_pool = AttentionPoolLatent(d, spec.attn_pool_mlp)

    @property
    def num_patches(self) -> int:
        """Patch tokens an image: ``grid * grid``."""
        return self.spec.grid ** 2

    def _prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        out = [self.cls_token.expand(b, -1, -1)] if self.spec.class_token else []
        if self.spec.reg_tokens:
            out.append(self.reg_token.expand(b, -1, -1))
        return out

    @override
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        if self.spec.embed_prefix:  # timm: cat the prefix, then add positions to all
            x = torch.cat(self._prefix(x) + [x], dim=1) + self.pos_embed
        else:  # no_embed_class: positions for patches only, prefix after
            x = torch.cat(self._prefix(x) + [x + self.pos_embed], dim=1)
        x = self.norm_pre(x)
        for block in self.blocks[:self.spec.depth - 1]:  # through block depth-2
            x = block(x)
        return x[:, self.spec.num_prefix_tokens:]


def timm_key(key: str) -> Optional[str]:
    """A featurizer weight's name here: timm's own ``gamma`` is Prismatic's
    ``scale_factor``; weights of modules Prismatic replaces by Identity map to None."""
    if key.startswith(UNUSED_PREFIXES):
        return None
    return re.sub(r"\.(ls\d)\.gamma$", r".\1.scale_factor", key)
