"""Loading QwenOFT from the local layouts its publishers use (nothing is downloaded).

``model.model_path`` may be:

* a **StarVLA run** (e.g. ``Qwen2.5-VL-OFT-LIBERO-4in1``): a directory with
  ``config.yaml`` (``framework.name: QwenOFT``, ``framework.qwenvl.base_vlm``: a local
  Qwen2.5-VL directory, ``framework.action_model.action_dim`` and
  ``future_action_window_size``), ``dataset_statistics.json`` and
  ``checkpoints/steps_<N>_pytorch_model.pt`` (the newest is taken), or one such ``.pt``
  file. Its state dict holds the backbone under ``qwen_vl_interface.model.`` and the head
  under ``action_model.``; both are loaded strictly. ``datasets.vla_data.CoT_prompt``,
  when set, wraps the instruction as in StarVLA's training.
* a **Hugging Face Qwen2.5-VL directory** (``config.json`` of ``model_type
  qwen2_5_vl``, tokenizer, ``preprocessor_config.json``): the backbone is loaded and the
  action head is freshly initialised, with a warning.

OpenVLA-OFT (:func:`load_openvla_oft`) reads an OpenVLA (Prismatic) Hugging Face directory
as OpenVLA-OFT, SimpleVLA-RL and RLinf publish it (:mod:`models.prismatic_loading`, no
remote code run), or a Qwen2.5-VL one, with its ``dataset_statistics.json`` (or the
``norm_stats`` of OpenVLA's config.json), and a peft LoRA adapter directory
(``model.lora_path``, as RLinf publishes ``lora_XXXXXX/``) on top.

A missing file, a mismatched action dimension or chunk length, or an unknown framework
name fails with a message that names it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch
import yaml

from configs import ModelConfig
from models.action_norm import ActionNorm
from models.base import LLM_LORA_TARGETS

log = logging.getLogger(__name__)
FRAMEWORKS = ("QwenOFT",)
VLM_PREFIX, HEAD_PREFIX = "qwen_vl_interface.model.", "action_model."


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the fix."""


def _newest_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.glob("checkpoints/*.pt"), key=lambda p: (
        int(m.group(1)) if (m := re.search(r"steps_(\d+)", p.name)) else -1, p.name))
    final = run_dir / "final_model" / "pytorch_model.pt"
    if found:
        return found[-1]
    if final.is_file():
        return final
    raise CheckpointError(f"{run_dir} has no checkpoints/*.pt nor final_model/pytorch_model.pt")


def _starvla_config(run_dir: Path, cfg: ModelConfig) -> tuple[Path, int, int, str]:
    """(base VLM dir, action_dim, chunk length, prompt template) from a StarVLA run's
    config.yaml; the template is ``datasets.vla_data.CoT_prompt`` when set."""
    file = run_dir / "config.yaml"
    conf = yaml.safe_load(file.read_text()) or {}
    framework = conf.get("framework", {})
    template = (conf.get("datasets") or {}).get("vla_data", {}).get("CoT_prompt") or \
        "{instruction}"
    if "{instruction}" not in template:
        raise CheckpointError(f"{file}: datasets.vla_data.CoT_prompt has no {{instruction}}")
    name = framework.get("name", "")
    if name not in FRAMEWORKS or name != cfg.starvla.framework_name:
        raise CheckpointError(f"{file}: framework.name is {name!r} and model.starvla."
                              f"framework_name is {cfg.starvla.framework_name!r}; chunkrl "
                              f"builds {list(FRAMEWORKS)}")
    base = framework.get("qwenvl", {}).get("base_vlm", "")
    if not base:
        raise CheckpointError(f"{file}: framework.qwenvl.base_vlm is not set; point it to a "
                              "local Qwen2.5-VL-3B-Instruct directory")
    base_dir = Path(base) if Path(base).is_absolute() else run_dir / base
    head = framework.get("action_model", {})
    action_dim = int(head.get("action_dim", cfg.action_dim))
    chunk = int(head.get("action_horizon", head.get("future_action_window_size", 7) + 1
                         + head.get("past_action_window_size", 0)))
    return base_dir, action_dim, chunk, template


def _check_shape(where: str, action_dim: int, chunk: int, cfg: ModelConfig) -> None:
    for name, have, want in (("action_dim", action_dim, cfg.action_dim),
                             ("num_action_chunks", chunk, cfg.num_action_chunks)):
        if have != want:
            raise CheckpointError(f"{where} has {name}={have} but model.{name}={want}; set "
                                  f"model.{name}={have} (and the env to match)")


def _load_backbone(vlm_dir: Path, cfg: ModelConfig):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen2VLImageProcessorPil

    for name in ("config.json", "preprocessor_config.json"):
        if not (vlm_dir / name).is_file():
            raise CheckpointError(f"{vlm_dir / name} does not exist: a Qwen2.5-VL directory "
                                  "needs config.json, tokenizer files and "
                                  "preprocessor_config.json")
    kind = json.loads((vlm_dir / "config.json").read_text()).get("model_type")
    if kind != "qwen2_5_vl":
        raise CheckpointError(f"{vlm_dir}/config.json has model_type {kind!r}; "
                              f"{cfg.kind} needs a Qwen2.5-VL backbone (qwen2_5_vl)")
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        vlm_dir, torch_dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(vlm_dir)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(vlm_dir)
    return vlm, tokenizer, image_processor


def _statistics(folder: Path, cfg: ModelConfig, binarize_gripper: bool,
                config: Optional[dict] = None) -> ActionNorm:
    """The action statistics of ``dataset_statistics.json`` in ``folder``, or, failing
    that file, of the ``norm_stats`` an OpenVLA ``config.json`` carries."""
    if not cfg.unnorm_key:
        return ActionNorm()
    file = folder / "dataset_statistics.json"
    if not file.is_file() and config and config.get("norm_stats"):
        norm = ActionNorm.from_stats(config["norm_stats"], f"{folder}/config.json:norm_stats",
                                     cfg.unnorm_key, cfg.action_stats, binarize_gripper)
    else:
        norm = ActionNorm.from_statistics(file, cfg.unnorm_key, cfg.action_stats,
                                          binarize_gripper)
    if norm.dim != cfg.action_dim:
        raise CheckpointError(f"dataset_statistics.json[{cfg.unnorm_key!r}] has {norm.dim}-D "
                              f"actions but model.action_dim={cfg.action_dim}")
    return norm


def load_qwen_oft(cfg: ModelConfig):
    """The QwenOFT policy of ``cfg.model_path`` in whichever supported layout it is."""
    path = Path(cfg.model_path)
    if not path.exists():
        raise CheckpointError(f"model.model_path {str(path)!r} does not exist")
    if path.is_file() or (path / "config.yaml").is_file():
        ckpt = path if path.is_file() else _newest_checkpoint(path)
        run_dir = path.parents[1] if path.is_file() else path
        base_dir, action_dim, chunk, template = _starvla_config(run_dir, cfg)
        _check_shape(str(run_dir / "config.yaml"), action_dim, chunk, cfg)
        policy = _qwen_oft(base_dir, run_dir, cfg, template)
        _load_starvla_weights(policy, ckpt)
    else:
        policy = _qwen_oft(path, path, cfg)
        log.warning("%s is a plain Qwen2.5-VL: the QwenOFT action head is freshly "
                    "initialised (train it, or load a StarVLA checkpoint)", path)
    _finish(policy, cfg)
    return policy


def _qwen_oft(vlm_dir: Path, stats_dir: Path, cfg: ModelConfig,
              template: str = "{instruction}"):
    from models.qwen_oft import QwenOFTPolicy

    vlm, tokenizer, image_processor = _load_backbone(vlm_dir, cfg)
    return QwenOFTPolicy(vlm, tokenizer, image_processor, cfg.num_action_chunks,
                         cfg.action_dim, use_wrist=cfg.use_wrist_image,
                         init_log_std=cfg.init_log_std, value_head=cfg.value_head,
                         norm=_statistics(stats_dir, cfg, cfg.binarize_gripper),
                         prompt_template=template)


def _load_starvla_weights(policy, ckpt: Path) -> None:
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(ckpt))
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    backbone = {k[len(VLM_PREFIX):]: v for k, v in state.items() if k.startswith(VLM_PREFIX)}
    head = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    other = sorted(k for k in state if not k.startswith((VLM_PREFIX, HEAD_PREFIX)))
    if other:
        raise CheckpointError(f"{ckpt}: unexpected keys {other[:5]} (a QwenOFT checkpoint "
                              f"holds {VLM_PREFIX}* and {HEAD_PREFIX}*)")
    for name, module, part in (("backbone", policy.vlm, backbone),
                               ("action head", policy.action_model, head)):
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt}: the {name} does not match model.* "
                                  f"({str(exc).splitlines()[0]} ...)") from exc


def _load_prismatic(path: Path, cfg: ModelConfig):
    """:func:`models.prismatic_loading.load_prismatic` for ``cfg`` (one image, or two with
    the wrist camera), its errors as :class:`CheckpointError`."""
    from models.prismatic_loading import PrismaticCheckpointError, load_prismatic

    try:
        return load_prismatic(path, 2 if cfg.use_wrist_image else 1, cfg.attn_implementation)
    except PrismaticCheckpointError as exc:
        raise CheckpointError(str(exc)) from exc


def load_openvla_oft(cfg: ModelConfig):
    """OpenVLA-OFT decoding over the VLM of ``cfg.model_path``: an OpenVLA (Prismatic)
    directory as OpenVLA-OFT, SimpleVLA-RL and RLinf publish it, or a Qwen2.5-VL one;
    ``dataset_statistics.json`` beside it, and the LoRA adapter of ``cfg.lora_path``."""
    from models.openvla_oft import OpenVLAOFTPolicy, QwenVLInputs
    from models.prismatic_loading import is_prismatic

    path = Path(cfg.model_path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"model.model_path {str(path)!r} has no config.json: give a "
                              "Hugging Face model directory")
    conf = json.loads((path / "config.json").read_text())
    if is_prismatic(conf):
        vlm, inputs, vocab = _load_prismatic(path, cfg)
    elif conf.get("model_type") == "qwen2_5_vl":
        vlm, tokenizer, image_processor = _load_backbone(path, cfg)
        inputs, vocab = QwenVLInputs(tokenizer, image_processor), 0
    else:
        raise CheckpointError(f"{path}/config.json has model_type {conf.get('model_type')!r}; "
                              "OpenVLA-OFT runs on OpenVLA's Prismatic (openvla) or "
                              "Qwen2.5-VL (qwen2_5_vl)")
    # The gripper stays a bin centre: the env's ``openvla`` convention binarises it.
    norm = _statistics(path, cfg, binarize_gripper=False, config=conf)
    policy = OpenVLAOFTPolicy(vlm, inputs, cfg.num_action_chunks, cfg.action_dim,
                              cfg.action_vocab_size or vocab, cfg.use_wrist_image,
                              cfg.top_k, cfg.value_head, norm)
    _finish(policy, cfg)
    return policy


def load_token_ar(cfg: ModelConfig):
    """Autoregressive action tokens over the causal LM of ``cfg.model_path`` (a Hugging
    Face directory with its tokenizer): a Qwen2 (the state as tokens), a Qwen2.5-VL (the
    cameras as images, with its image processor) or an OpenVLA (Prismatic: the original
    OpenVLA's decoding); ``dataset_statistics.json`` beside it."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from models.prismatic_loading import is_prismatic
    from models.token_ar import TokenARPolicy

    path = Path(cfg.model_path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"model.model_path {str(path)!r} has no config.json: give a "
                              "Hugging Face model directory")
    conf = json.loads((path / "config.json").read_text())
    kind = conf.get("model_type")
    images = prismatic = None
    vocab = cfg.action_vocab_size
    if kind == "qwen2_5_vl":
        lm, tokenizer, images = _load_backbone(path, cfg)
    elif kind == "qwen2":
        lm = Qwen2ForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                              attn_implementation=cfg.attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(path)
    elif is_prismatic(conf):
        lm, prismatic, padded = _load_prismatic(path, cfg)
        tokenizer, vocab = prismatic.tokenizer, vocab or padded
    else:
        raise CheckpointError(f"{path}/config.json has model_type {kind!r}; token_ar runs on "
                              "a Qwen2 causal LM (qwen2), a Qwen2.5-VL (qwen2_5_vl) or an "
                              "OpenVLA (openvla)")
    policy = TokenARPolicy(lm, tokenizer, cfg.num_action_chunks, cfg.action_dim, vocab,
                           cfg.top_k, cfg.value_head,
                           _statistics(path, cfg, binarize_gripper=False, config=conf),
                           image_processor=images, use_wrist=cfg.use_wrist_image,
                           prismatic=prismatic)
    _finish(policy, cfg)
    return policy


def _finish(policy, cfg: ModelConfig) -> None:
    """LoRA and gradient checkpointing on the backbone, as configured."""
    if cfg.lora_path:
        from peft import PeftModel

        adapter = Path(cfg.lora_path)
        if not (adapter / "adapter_config.json").is_file():
            raise CheckpointError(f"model.lora_path {str(adapter)!r} has no "
                                  "adapter_config.json: give a peft adapter directory")
        from peft import LoraConfig

        # As a plain peft model: a task type (CAUSAL_LM) would ask for generation hooks.
        config = LoraConfig.from_pretrained(str(adapter))
        config.task_type = None
        policy.vlm = PeftModel.from_pretrained(policy.vlm, str(adapter), config=config,
                                               is_trainable=True)
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, lora_dropout=0.0,
                          target_modules=getattr(policy.vlm, "lora_targets", LLM_LORA_TARGETS))
        policy.vlm = get_peft_model(policy.vlm, lora)
    if cfg.gradient_checkpointing:
        policy.vlm.gradient_checkpointing_enable()
