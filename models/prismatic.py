"""OpenVLA's Prismatic VLM without its remote code: timm-layout ViTs + transformers' Llama.

OpenVLA, OpenVLA-OFT and the checkpoints RLinf and SimpleVLA-RL publish for them are
Hugging Face directories whose ``config.json`` (``model_type: openvla``) names remote
code (``modeling_prismatic.py``). chunkrl does not execute checkpoint code; it rebuilds
the network from the config and the weights:

* ``vision_backbone.featurizer`` (and ``fused_featurizer`` when
  ``use_fused_vision_backbone``): timm ViTs (:mod:`models.timm_vit`), DINOv2 and SigLIP
  for ``dinosiglip``; each image is split into its two normalised copies (3 channels
  each), and their patch features are concatenated along the feature dimension; with
  several images (``num_images_in_input``) their patches follow one another.
* ``projector``: ``fc1, GELU, fc2`` (one backbone) or ``fc1, GELU, fc2, GELU, fc3`` (fused,
  ``fc1`` 4x wide).
* ``language_model``: ``LlamaForCausalLM`` of ``text_config`` (transformers' own class).

The multimodal sequence is Prismatic's: ``[BOS] [patches] [prompt after BOS]``. The
prompt is OpenVLA's (``In: What action should the robot take to <instruction>?\\nOut:``
and the empty token ``▁`` that OpenVLA appends), then OFT's T*D action placeholders,
whose input embeddings are zeroed as in OFT. Rows of different lengths are padded
between the patches and the prompt, masked, with position ids counting only real
tokens, so each row sees exactly its unpadded sequence.

Images are transformed as Prismatic's image processor does, from
``preprocessor_config.json`` (resize, center crop, normalise per backbone) in tensor ops on
the device; a size change uses torch's antialiased bicubic resize, PIL's counterpart, and
rounds to uint8 as PIL does (at LIBERO's 224 px nothing is resized).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from envs.base import EnvObs
from models.base import LLM_LORA_TARGETS, unwrap
from models.timm_vit import TimmViT

EMPTY_TOKEN = "▁"  # OpenVLA appends it after "Out:" (id 29871 in Llama-2)
INTERPOLATIONS = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


def build_prompt(instruction: str) -> str:
    """OpenVLA's question; the ``▁`` after ``Out:`` is appended as a token."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


class PrismaticVisionBackbone(nn.Module):
    """One or two featurizers over ``num_images`` images of a row."""

    def __init__(self, featurizer: TimmViT, fused_featurizer: Optional[TimmViT],
                 num_images: int):
        super().__init__()
        self.featurizer = featurizer
        if fused_featurizer is not None:
            self.fused_featurizer = fused_featurizer
        self.fused, self.num_images = fused_featurizer is not None, num_images

    @property
    def embed_dim(self) -> int:
        """The width of a patch feature: the featurizer's, plus the fused featurizer's."""
        return self.featurizer.spec.embed_dim + (
            self.fused_featurizer.spec.embed_dim if self.fused else 0)

    @property
    def num_patches(self) -> int:
        """Patches a row: the featurizer's per image, times ``num_images``."""
        return self.featurizer.num_patches * self.num_images

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, num_images*C, H, W] (C = 6 fused, 3 otherwise) -> [B, num_patches, D]."""
        per_image = 6 if self.fused else 3
        patches = []
        for image in pixel_values.split(per_image, dim=1):
            if self.fused:
                regular, fused = image.split(3, dim=1)
                patches.append(torch.cat([self.featurizer(regular),
                                          self.fused_featurizer(fused)], dim=2))
            else:
                patches.append(self.featurizer(image))
        return torch.cat(patches, dim=1)


class PrismaticProjector(nn.Module):
    """Vision features -> LLM embeddings, Prismatic's two MLP shapes."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(x)) if self.fused else x


class PrismaticVLM(nn.Module):
    """``vision_backbone``, ``projector`` and ``language_model``, under the checkpoint's
    names (so its state dict and peft adapters load as they were saved)."""

    lora_targets = LLM_LORA_TARGETS + ["qkv", "proj", "fc1", "fc2", "fc3"]

    def __init__(self, vision_backbone: PrismaticVisionBackbone, language_model):
        super().__init__()
        self.vision_backbone = vision_backbone
        self.projector = PrismaticProjector(vision_backbone.fused, vision_backbone.embed_dim,
                                            language_model.config.hidden_size)
        self.language_model = language_model
        self.config = language_model.config  # what peft and transformers look up

    @property
    def lm_head(self) -> nn.Linear:
        """The language model's output layer (OpenVLA-OFT reads its action bins off it)."""
        return self.language_model.lm_head

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Recompute the LLM's layers in backward (the ViTs are small next to it)."""
        self.language_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})

    def patch_embeddings(self, pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The images' patches as language-model inputs [B, P, H] (featurizers, projector)."""
        return self.projector(self.vision_backbone(pixel_values.to(dtype))).to(dtype)

    def hidden_states(self, inputs: dict) -> torch.Tensor:
        """Last hidden states [B, 1 + P + L, H] of ``[BOS][patches][pad][tail]``."""
        embed = self.language_model.get_input_embeddings()
        tail = embed(inputs["tail_ids"]) * (~inputs["placeholder"]).unsqueeze(-1)
        patches = self.patch_embeddings(inputs["pixel_values"], tail.dtype)
        x = torch.cat([embed(inputs["bos"]), patches, tail], dim=1)
        mask = torch.cat([torch.ones(x.shape[0], 1 + patches.shape[1], dtype=torch.long,
                                     device=x.device), inputs["tail_mask"]], dim=1)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        out = self.language_model.model(inputs_embeds=x, attention_mask=mask,
                                        position_ids=positions)
        return out.last_hidden_state


@dataclass(frozen=True)
class ImageTransform:
    """One backbone's resize, center crop and normalisation (Prismatic's processor)."""

    resize: tuple[int, ...]  # (h, w), or (shorter edge,)
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8-valued float [N,3,H,W] -> normalised [N,3,crop_h,crop_w]."""
        h, w = x.shape[-2:]
        if len(self.resize) == 1:
            s = self.resize[0]
            size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        else:
            size = self.resize
        if tuple(size) != (h, w):  # PIL resizes uint8 and rounds: so do we
            x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True,
                              align_corners=False).round().clamp(0, 255)
        ch, cw = self.crop
        top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
        if top < 0 or left < 0:
            raise ValueError(f"images of {tuple(x.shape[-2:])} cannot be center-cropped "
                             f"to {self.crop}")
        x = x[..., top:top + ch, left:left + cw] / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def image_transforms(file: Path) -> list[ImageTransform]:
    """The per-backbone transforms of a Prismatic ``preprocessor_config.json``."""
    conf = json.loads(file.read_text())
    if conf.get("tvf_do_letterbox"):
        raise ValueError(f"{file}: letterbox padding (tvf_do_letterbox) is not supported; "
                         "OpenVLA's checkpoints use resize-naive")
    n = len(conf.get("input_sizes") or conf.get("means") or [])
    if not n:
        raise ValueError(f"{file} has no input_sizes: is it a Prismatic image processor?")
    out = []
    for i in range(n):
        size = conf["input_sizes"][i][1:]
        resize = (conf.get("tvf_resize_params") or [{}] * n)[i]
        crop = (conf.get("tvf_crop_params") or [{}] * n)[i]
        norm = (conf.get("tvf_normalize_params") or [{}] * n)[i]
        interp = resize.get("interpolation", conf.get("interpolations", ["bicubic"] * n)[i])
        if interp not in INTERPOLATIONS:
            raise ValueError(f"{file}: interpolation {interp!r} is not supported; "
                             f"valid: {sorted(map(str, INTERPOLATIONS))}")
        r = resize.get("size", size)
        out.append(ImageTransform(
            resize=tuple(r) if isinstance(r, (list, tuple)) else (int(r),),
            crop=tuple(crop.get("output_size", size)),
            mean=tuple(norm.get("mean", conf["means"][i])),
            std=tuple(norm.get("std", conf["stds"][i])),
            interpolation=INTERPOLATIONS[interp]))
    return out


class PrismaticInputs:
    """Tokenises OpenVLA's prompt and transforms the images for :class:`PrismaticVLM`."""

    def __init__(self, tokenizer, transforms: list[ImageTransform]):
        self.tokenizer, self.transforms = tokenizer, transforms
        empty = tokenizer.convert_tokens_to_ids(EMPTY_TOKEN)
        self.empty_id = None if empty in (None, tokenizer.unk_token_id) else empty
        if tokenizer.bos_token_id is None:
            raise ValueError("the checkpoint's tokenizer has no BOS token; Prismatic puts "
                             "the image patches after it")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id

    def pixels(self, views: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """Views (each [B,H,W,3] uint8) -> [B, views * backbones * 3, S, S]."""
        out = []
        for view in views:
            x = torch.from_numpy(np.ascontiguousarray(view)).to(device).permute(0, 3, 1, 2)
            out.extend(t(x.float()) for t in self.transforms)
        return torch.cat(out, dim=1)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of OpenVLA's prompt for ``instruction``: BOS first, and the empty ``▁``
        token last when the tokenizer has one."""
        ids = self.tokenizer(build_prompt(instruction))["input_ids"]
        if ids[0] != self.tokenizer.bos_token_id:
            ids = [self.tokenizer.bos_token_id] + ids
        if self.empty_id is not None and ids[-1] != self.empty_id:
            ids.append(self.empty_id)
        return ids

    def encode(self, obs: EnvObs, views: list[np.ndarray], num_tokens: int,
               device: torch.device) -> dict:
        """``bos`` [B,1], ``tail_ids``/``tail_mask``/``placeholder`` [B,L] (the prompt
        after BOS, then ``num_tokens`` placeholders, left-padded), ``pixel_values``."""
        tails = [self.prompt_ids(t)[1:] + [self.pad_id] * num_tokens
                 for t in obs.task_descriptions]
        length = max(map(len, tails))
        ids = torch.full((len(tails), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, tail in enumerate(tails):
            ids[i, length - len(tail):] = torch.tensor(tail)
            mask[i, length - len(tail):] = 1
        placeholder = torch.zeros_like(ids, dtype=torch.bool)
        placeholder[:, length - num_tokens:] = True
        bos = torch.full((len(tails), 1), self.tokenizer.bos_token_id, dtype=torch.long)
        return {"bos": bos.to(device), "tail_ids": ids.to(device),
                "tail_mask": mask.to(device), "placeholder": placeholder.to(device),
                "pixel_values": self.pixels(views, device)}

    def hidden_states(self, vlm, inputs: dict) -> torch.Tensor:
        """The VLM's last hidden states for ``inputs`` (:meth:`PrismaticVLM.hidden_states`)."""
        return unwrap(vlm).hidden_states(inputs)
