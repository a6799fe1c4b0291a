"""A tiny random OpenVLA (Prismatic) checkpoint, built offline in OpenVLA's layout.

The vision weights come from transformers' own DINOv2-with-registers and SigLIP vision
models (random, tiny), converted to the timm layout OpenVLA's checkpoints store (with
Prismatic's ``scale_factor`` name for timm's LayerScale ``gamma``), so a test can hold the
loaded featurizers against an independent implementation. The language model is a tiny
``LlamaForCausalLM``; the tokenizer a Llama tokenizer (byte fallback, ``▁``) made from a
small vocabulary whose last 256 ids are the action bins. Weights are saved as two
safetensors shards with an index, as the 7B checkpoints are.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from models.tiny_vla import STATS

DINO_ID, SIGLIP_ID = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
BASE_VOCAB, PAD_TO = 640, 64  # tokenizer ids; the LM's vocabulary is padded to 704


@dataclass
class TinyPrismatic:
    """The directory and the transformers vision models its featurizers came from."""

    path: Path
    dino: torch.nn.Module
    siglip: torch.nn.Module


def tiny_llama_tokenizer():
    """Llama's tokenizer pipeline over a small vocabulary (no download)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(piece, len(vocab))
    while len(vocab) < BASE_VOCAB:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.add_special_tokens({"pad_token": "<PAD>"})  # id 640, as OpenVLA's 32000
    return tok


def _jitter(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (inits leave LayerScale at 1 and biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _dino_to_timm(hf) -> dict:
    """transformers' Dinov2WithRegistersModel -> timm's vit_*_reg4_dinov2 names."""
    s = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    pos = s["embeddings.position_embeddings"]
    out = {"cls_token": s["embeddings.cls_token"] + pos[:, :1],  # timm: no pos on prefix
           "reg_token": s["embeddings.register_tokens"], "pos_embed": pos[:, 1:],
           "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}
    for i in range(hf.config.num_hidden_layers):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[q + f"attn.qkv.{part}"] = torch.cat(
                [s[p + f"attention.{n}_proj.{part}"] for n in ("q", "k", "v")])
            out[q + f"attn.proj.{part}"] = s[p + f"attention.o_proj.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[q + f"{name}.{part}"] = s[p + f"{name}.{part}"]
        out[q + "ls1.scale_factor"] = s[p + "layer_scale1.lambda1"]
        out[q + "ls2.scale_factor"] = s[p + "layer_scale2.lambda1"]
    return out


def _siglip_to_timm(hf) -> dict:
    """transformers' SiglipVisionModel -> timm's vit_*_siglip names (MAP head included)."""
    s = {k.removeprefix("vision_model."): v.detach().clone() for k, v in hf.state_dict().items()}
    d = hf.config.hidden_size
    out = {"pos_embed": s["embeddings.position_embedding.weight"][None],
           "patch_embed.proj.weight": s["embeddings.patch_embedding.weight"],
           "patch_embed.proj.bias": s["embeddings.patch_embedding.bias"],
           "norm.weight": s["post_layernorm.weight"], "norm.bias": s["post_layernorm.bias"],
           "attn_pool.latent": s["head.probe"],
           "attn_pool.q.weight": s["head.attention.in_proj_weight"][:d],
           "attn_pool.q.bias": s["head.attention.in_proj_bias"][:d],
           "attn_pool.kv.weight": s["head.attention.in_proj_weight"][d:],
           "attn_pool.kv.bias": s["head.attention.in_proj_bias"][d:]}
    for part in ("weight", "bias"):
        out[f"attn_pool.proj.{part}"] = s[f"head.attention.out_proj.{part}"]
        out[f"attn_pool.norm.{part}"] = s[f"head.layernorm.{part}"]
        for fc in ("fc1", "fc2"):
            out[f"attn_pool.mlp.{fc}.{part}"] = s[f"head.mlp.{fc}.{part}"]
    for i in range(hf.config.num_hidden_layers):
        p, q = f"encoder.layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[q + f"attn.qkv.{part}"] = torch.cat(
                [s[p + f"self_attn.{n}_proj.{part}"] for n in ("q", "k", "v")])
            out[q + f"attn.proj.{part}"] = s[p + f"self_attn.out_proj.{part}"]
            out[q + f"norm1.{part}"] = s[p + f"layer_norm1.{part}"]
            out[q + f"norm2.{part}"] = s[p + f"layer_norm2.{part}"]
            for fc in ("fc1", "fc2"):
                out[q + f"mlp.{fc}.{part}"] = s[p + f"mlp.{fc}.{part}"]
    return out


def make_prismatic(folder: Path, image_size: int = 56, seed: int = 0) -> TinyPrismatic:
    """A tiny fused DINOv2+SigLIP / Llama OpenVLA directory with dataset statistics."""
    from safetensors.torch import save_file
    from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
                              LlamaConfig, LlamaForCausalLM, SiglipVisionConfig,
                              SiglipVisionModel)

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dino = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=16, intermediate_size=256,
        image_size=image_size, patch_size=14, num_register_tokens=4)).eval()
    siglip = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=16, intermediate_size=180,
        image_size=image_size, patch_size=14, hidden_act="gelu",
        layer_norm_eps=1e-6)).eval()
    _jitter(dino, seed + 1)
    _jitter(siglip, seed + 2)
    text = dict(vocab_size=BASE_VOCAB + PAD_TO, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=1024, pad_token_id=BASE_VOCAB, bos_token_id=1,
                eos_token_id=2)
    llm = LlamaForCausalLM(LlamaConfig(**text))
    vision_dim, llm_dim = 64 + 48, 64
    projector = {"fc1": torch.nn.Linear(vision_dim, 4 * vision_dim),
                 "fc2": torch.nn.Linear(4 * vision_dim, llm_dim),
                 "fc3": torch.nn.Linear(llm_dim, llm_dim)}
    vision = {f"vision_backbone.featurizer.{k}": v for k, v in _dino_to_timm(dino).items()}
    vision.update({f"vision_backbone.fused_featurizer.{k}": v
                   for k, v in _siglip_to_timm(siglip).items()})
    vision.update({f"projector.{n}.{k}": v.detach().clone()
                   for n, fc in projector.items() for k, v in fc.state_dict().items()})
    language = {f"language_model.{k}": v.detach().clone() for k, v in llm.state_dict().items()}
    shards = {"model-00001-of-00002.safetensors": vision,
              "model-00002-of-00002.safetensors": language}
    for name, tensors in shards.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {}, "weight_map": {k: n for n, t in shards.items() for k in t}}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "vision_backbone_id": "dinosiglip-vit-so-224px", "use_fused_vision_backbone": True,
        "timm_model_ids": [DINO_ID, SIGLIP_ID], "timm_override_act_layers": [None, None],
        "image_sizes": [image_size, image_size], "image_resize_strategy": "resize-naive",
        "llm_backbone_id": "llama2-7b-pure", "arch_specifier": "no-align+fused-gelu-mlp",
        "n_action_bins": 256, "pad_to_multiple_of": PAD_TO,
        "text_config": {"model_type": "llama", **text},
        "norm_stats": {"libero_spatial_no_noops": STATS}}))
    sizes = [[3, image_size, image_size]] * 2
    means, stds = [[0.485, 0.456, 0.406], [0.5] * 3], [[0.229, 0.224, 0.225], [0.5] * 3]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "PrismaticImageProcessor", "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive", "input_sizes": sizes,
        "interpolations": ["bicubic", "bicubic"], "means": means, "stds": stds,
        "tvf_do_letterbox": False, "tvf_letterbox_fill": None,
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                               "size": [image_size, image_size]}] * 2,
        "tvf_crop_params": [{"output_size": [image_size, image_size]}] * 2,
        "tvf_normalize_params": [{"inplace": False, "mean": m, "std": s}
                                 for m, s in zip(means, stds)]}))
    tiny_llama_tokenizer().save_pretrained(folder)
    (folder / "dataset_statistics.json").write_text(json.dumps(
        {"libero_spatial_no_noops": STATS}))
    return TinyPrismatic(folder, dino, siglip)
