"""A trained policy written in the layout it was loaded from, for the user's own tools:
``python launch.py export RUN_DIR OUT``.

``RUN_DIR/checkpoint.pt`` (a learner's or behaviour cloning's) names its config; the
policy is rebuilt from it with those weights and written by kind:

* ``qwen_oft``: a **StarVLA run** (``config.yaml`` naming the same base Qwen2.5-VL
  directory, ``dataset_statistics.json``, ``checkpoints/steps_<version>_pytorch_model.pt``
  with the backbone under ``qwen_vl_interface.model.`` and the head under
  ``action_model.``), a LoRA adapter merged into the backbone. ``model.model_path=OUT``
  loads it back.
* ``openvla_oft`` trained with LoRA: the **peft adapter** (``OUT/lora_adapter``: what RLinf
  publishes as ``lora_XXXXXX/``) and ``dataset_statistics.json``, on the unchanged base
  (``model.model_path`` as before, ``model.lora_path=OUT/lora_adapter``).
* ``cnn_gaussian``: chunkrl's own ``checkpoint.pt`` (weights and config only) and its
  ``dataset_statistics.json`` when it has one.

StarVLA's and OpenVLA-OFT's layouts have no place for chunkrl's exploration std
(``log_std``) or a PPO value head: they are left out (the exported policy acts as the
deterministic one). ``OUT/export.json`` says what was written from where.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from configs import ModelConfig, config_from_dict


class ExportError(ValueError):
    """A run that cannot be exported; the message says why and what would work."""


def _run_config(ckpt: Path) -> tuple[ModelConfig, int]:
    """The model config (with ``checkpoint`` = ``ckpt``) and version of a checkpoint."""
    if not ckpt.is_file():
        raise ExportError(f"{ckpt} does not exist: give a run folder with a checkpoint.pt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)  # config only
    if "config" not in state:
        raise ExportError(f"{ckpt} keeps no config: it is not a chunkrl checkpoint")
    raw = state["config"]
    raw["model"]["checkpoint"] = str(ckpt)
    meta = ckpt.with_suffix(".json")
    version = json.loads(meta.read_text()).get("version", 0) if meta.is_file() else 0
    return config_from_dict(raw).model, int(version)


def _statistics_file(cfg: ModelConfig) -> Path | None:
    """The dataset_statistics.json the policy's action normalisation came from: beside
    the chunkrl checkpoint (behaviour cloning writes one), else beside model_path."""
    for folder in (Path(cfg.checkpoint).parent, Path(cfg.model_path)):
        if (folder / "dataset_statistics.json").is_file():
            return folder / "dataset_statistics.json"
    return None


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write ``run_dir``'s trained policy to ``out`` (see the module docstring)."""
    from models import build_policy

    cfg, version = _run_config(Path(run_dir) / "checkpoint.pt")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: give a new folder")
    writers = {"qwen_oft": _starvla, "openvla_oft": _peft_adapter, "cnn_gaussian": _chunkrl}
    if cfg.kind not in writers:
        raise ExportError(f"model.kind={cfg.kind} has no export yet (exported kinds: "
                          f"{sorted(writers)}); its checkpoint.pt loads with model.checkpoint")
    if cfg.kind == "openvla_oft" and not (cfg.lora_rank or cfg.lora_path):
        raise ExportError("an OpenVLA-OFT trained without LoRA has no export yet (its whole "
                          "Prismatic directory would be rewritten); train with "
                          "model.lora_rank, or load the checkpoint.pt with model.checkpoint")
    policy = build_policy(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    written = writers[cfg.kind](policy, cfg, out, version)
    stats = _statistics_file(cfg)
    if stats is not None:
        shutil.copyfile(stats, out / "dataset_statistics.json")
    (out / "export.json").write_text(json.dumps({
        "from": str(Path(run_dir).resolve()), "version": version, "kind": cfg.kind,
        "written": written, "dataset_statistics": str(stats) if stats else None,
        "left_out": ["log_std", "value_head"] if cfg.kind != "cnn_gaussian" else []},
        indent=1))
    return out


def _starvla(policy, cfg: ModelConfig, out: Path, version: int) -> str:
    from models.vla_loading import HEAD_PREFIX, VLM_PREFIX, _starvla_config

    source = Path(cfg.model_path)
    if (source / "config.yaml").is_file():
        base = _starvla_config(source, cfg)[0]
    elif source.is_file():  # one checkpoint file of a StarVLA run
        base = _starvla_config(source.parents[1], cfg)[0]
    else:
        base = source
    vlm = policy.vlm.merge_and_unload() if hasattr(policy.vlm, "merge_and_unload") \
        else policy.vlm
    state = {VLM_PREFIX + k: v for k, v in vlm.state_dict().items()}
    state.update({HEAD_PREFIX + k: v for k, v in policy.action_model.state_dict().items()})
    conf: dict = {"framework": {
        "name": "QwenOFT", "qwenvl": {"base_vlm": str(base.resolve())},
        "action_model": {"action_dim": cfg.action_dim,
                         "future_action_window_size": cfg.num_action_chunks - 1,
                         "past_action_window_size": 0}}}
    if policy.prompt_template != "{instruction}":
        conf["datasets"] = {"vla_data": {"CoT_prompt": policy.prompt_template}}
    (out / "config.yaml").write_text(yaml.safe_dump(conf))
    (out / "checkpoints").mkdir()
    name = f"checkpoints/steps_{version}_pytorch_model.pt"
    torch.save(state, out / name)
    return name


def _peft_adapter(policy, cfg: ModelConfig, out: Path, version: int) -> str:
    trained = [n for n, p in policy.named_parameters()
               if p.requires_grad and "lora_" not in n and not n.startswith("value_head.")
               and n != "log_std"]
    if trained:
        raise ExportError(f"parameters outside the LoRA adapter were trained ({trained[:3]}); "
                          "a peft adapter cannot carry them: load the checkpoint.pt with "
                          "model.checkpoint")
    policy.vlm.save_pretrained(str(out / "lora_adapter"))
    return "lora_adapter"


def _chunkrl(policy, cfg: ModelConfig, out: Path, version: int) -> str:
    state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    torch.save({"model": policy.state_dict(), "config": state["config"]},
               out / "checkpoint.pt")
    return "checkpoint.pt"
