"""Loading an OpenVLA (Prismatic) Hugging Face directory without its remote code.

The directory is the one OpenVLA, OpenVLA-OFT, SimpleVLA-RL and RLinf publish:
``config.json`` (``model_type: openvla``; ``timm_model_ids``, ``image_sizes``,
``use_fused_vision_backbone``, ``text_config``, ``pad_to_multiple_of``, ``n_action_bins``,
maybe ``norm_stats``), the weights (``model.safetensors`` or sharded with
``model.safetensors.index.json``; ``pytorch_model.bin`` likewise), the Llama tokenizer,
``preprocessor_config.json`` and ``dataset_statistics.json``. The network is built on the
meta device from the config and the weights' shapes, then each shard's tensors are
assigned in turn, so at most one shard is held twice. Every parameter must come from the
checkpoint and every checkpoint tensor must find its parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from models.prismatic import (PrismaticInputs, PrismaticVisionBackbone, PrismaticVLM,
                              image_transforms)
from models.timm_vit import TimmViT, ViTSpec, timm_key

MODEL_TYPES = ("openvla", "prismatic")
FEATURIZERS = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


class PrismaticCheckpointError(ValueError):
    """A Prismatic directory that cannot be loaded; the message names the file."""


def is_prismatic(conf: dict) -> bool:
    """Whether a config.json describes an OpenVLA/Prismatic model."""
    return conf.get("model_type") in MODEL_TYPES


def _weight_files(path: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise PrismaticCheckpointError(f"{path / index} names shards that do not "
                                               f"exist: {missing[:3]}")
            return [path / s for s in shards]
    raise PrismaticCheckpointError(f"{path} has no model.safetensors, "
                                   "model.safetensors.index.json nor pytorch_model.bin")


def _renamed(key: str):
    """A checkpoint key's name in :class:`PrismaticVLM` (None: a weight Prismatic drops)."""
    for prefix in FEATURIZERS:
        if key.startswith(prefix):
            inner = timm_key(key[len(prefix):])
            return None if inner is None else prefix + inner
    return key


def _shards(files: list[Path]) -> Iterator[dict[str, torch.Tensor]]:
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            yield load_file(str(file))
        else:
            yield torch.load(file, map_location="cpu", weights_only=True)


def _shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        else:
            shard = torch.load(file, map_location="meta", weights_only=True)
            shapes.update({k: tuple(v.shape) for k, v in shard.items()})
    return {name: s for k, s in shapes.items() if (name := _renamed(k)) is not None}


def _vision(conf: dict, shapes: dict, num_images: int, where: Path) -> PrismaticVisionBackbone:
    ids = conf.get("timm_model_ids") or []
    fused = bool(conf.get("use_fused_vision_backbone"))
    if len(ids) != 1 + fused:
        raise PrismaticCheckpointError(f"{where}: timm_model_ids {ids} does not match "
                                       f"use_fused_vision_backbone={fused}")
    sizes = conf.get("image_sizes") or [224] * len(ids)
    acts = conf.get("timm_override_act_layers") or [None] * len(ids)
    vits = []
    for prefix, model_id, size, act in zip(FEATURIZERS, ids, sizes, acts):
        own = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
        if not own:
            raise PrismaticCheckpointError(f"{where}: the weights hold no {prefix}*")
        try:
            vits.append(TimmViT(ViTSpec.from_shapes(own, model_id, size, act)))
        except (ValueError, KeyError) as exc:
            raise PrismaticCheckpointError(f"{where}: {prefix[:-1]}: {exc}") from exc
    if num_images > 1 and not fused:
        raise PrismaticCheckpointError(f"{where}: several images in the prompt need the fused "
                                       "(DINOv2 + SigLIP) backbone, as OpenVLA-OFT has")
    return PrismaticVisionBackbone(vits[0], vits[1] if fused else None, num_images)


def _language_model(conf: dict, attn_implementation: str, where: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    text = dict(conf.get("text_config") or {})
    kind = text.pop("model_type", "llama")
    text.pop("torch_dtype", None)
    text.pop("dtype", None)
    try:
        text_config = AutoConfig.for_model(kind, **text)
    except ValueError as exc:
        raise PrismaticCheckpointError(f"{where}: text_config.model_type {kind!r} is not a "
                                       "transformers language model") from exc
    return AutoModelForCausalLM.from_config(text_config, dtype=torch.float32,
                                            attn_implementation=attn_implementation)


def load_prismatic(path: Path, num_images: int, attn_implementation: str = "sdpa"):
    """(PrismaticVLM with the checkpoint's weights in fp32, its PrismaticInputs,
    action vocabulary size) of the Prismatic directory ``path``."""
    conf = json.loads((path / "config.json").read_text())
    if conf.get("n_action_bins", 256) != 256:
        raise PrismaticCheckpointError(f"{path}/config.json: n_action_bins is "
                                       f"{conf['n_action_bins']}; OpenVLA decodes 256 bins")
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            raise PrismaticCheckpointError(f"{path / name} does not exist: an OpenVLA "
                                           "directory has its tokenizer and image processor")
    files = _weight_files(path)
    shapes = _shapes(files)
    with torch.device("meta"):
        vlm = PrismaticVLM(_vision(conf, shapes, num_images, path / "config.json"),
                           _language_model(conf, attn_implementation, path / "config.json"))
    _assign_weights(vlm, files, path)
    transforms = image_transforms(path / "preprocessor_config.json")
    if len(transforms) != 1 + vlm.vision_backbone.fused:
        raise PrismaticCheckpointError(f"{path}/preprocessor_config.json has {len(transforms)} "
                                       "image transforms; config.json has "
                                       f"{1 + vlm.vision_backbone.fused} backbones")
    inputs = PrismaticInputs(_tokenizer(path), transforms)
    vocab = vlm.config.vocab_size - int(conf.get("pad_to_multiple_of") or 0)
    return vlm, inputs, vocab


def _tokenizer(path: Path):
    """The class tokenizer_config.json names (AutoTokenizer would read config.json's
    remote-code auto_map and ask whether to run it)."""
    import transformers

    name = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    cls = getattr(transformers, name or "", None) or transformers.PreTrainedTokenizerFast
    return cls.from_pretrained(path)


def _assign_weights(vlm: PrismaticVLM, files: list[Path], path: Path) -> None:
    expected = set(vlm.state_dict())
    loaded, unexpected = set(), []
    for shard in _shards(files):
        part = {}
        for key, tensor in shard.items():
            name = _renamed(key)
            if name is None:
                continue
            if name not in expected:
                unexpected.append(key)
                continue
            part[name] = tensor.to(torch.float32)
        vlm.load_state_dict(part, strict=False, assign=True)
        loaded.update(part)
        del shard, part
    if vlm.language_model.config.tie_word_embeddings:
        vlm.language_model.tie_weights()
        loaded.add("language_model.lm_head.weight")
    missing = sorted(expected - loaded)
    if unexpected or missing:
        raise PrismaticCheckpointError(
            f"{path}: the weights do not match config.json: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]} ({len(missing)} and {len(unexpected)} in all)")
    # Non-persistent buffers (RoPE's inverse frequencies) are not in any checkpoint.
    rotary = vlm.language_model.model.rotary_emb
    vlm.language_model.model.rotary_emb = type(rotary)(config=vlm.language_model.config)
    meta = [n for n, t in [*vlm.named_parameters(), *vlm.named_buffers()] if t.is_meta]
    if meta:
        raise PrismaticCheckpointError(f"{path}: nothing in the checkpoint for {meta[:4]}")
