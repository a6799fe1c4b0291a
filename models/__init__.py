"""Policies shared by the inference servers and the learner (:mod:`models.base`)."""

import torch

from configs import ModelConfig
from models.base import Evaluation, Policy, PolicyOutput


def build_policy(cfg: ModelConfig) -> Policy:
    """A policy of kind ``cfg.kind`` (VLAs from ``cfg.model_path``), then with
    ``cfg.checkpoint``'s weights when set (a chunkrl checkpoint of the same config)."""
    policy = _fresh_policy(cfg)
    if cfg.checkpoint:
        load_checkpoint(policy, cfg.checkpoint, cfg)
    return policy


def load_checkpoint(policy: Policy, path: str, cfg: ModelConfig | None = None) -> None:
    """Load the weights of a chunkrl ``checkpoint.pt`` (the learner's or behaviour
    cloning's). A value head the checkpoint lacks (PPO after behaviour cloning) starts
    fresh; one the policy lacks (evaluating a PPO checkpoint) is left out. A
    ``dataset_statistics.json`` beside it (behaviour cloning writes one) becomes
    a VLA's action normalisation, under ``model.unnorm_key`` or else the checkpoint's."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model.checkpoint {path!r} does not exist; give the "
                                "checkpoint.pt of a finished run (runs/<name>/checkpoint.pt)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        weights = state["model"]
        if getattr(policy, "value_head", None) is None:  # evaluating a PPO checkpoint
            weights = {k: v for k, v in weights.items() if not k.startswith("value_head.")}
        missing, unexpected = policy.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("value_head.")]
        if missing or unexpected:
            raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as exc:
        raise ValueError(f"model.checkpoint {path!r} cannot be loaded into model.kind's "
                         f"policy ({type(exc).__name__}: {str(exc).splitlines()[0]}); is "
                         "it a chunkrl checkpoint.pt of the same model config?") from exc
    stats = file.parent / "dataset_statistics.json"
    if hasattr(policy, "norm") and stats.is_file():
        from models.action_norm import ActionNorm

        key = (cfg.unnorm_key if cfg else "") or state.get("unnorm_key", "")
        policy.norm = ActionNorm.from_statistics(
            stats, key, cfg.action_stats if cfg else "q01q99",
            bool(cfg and cfg.kind == "qwen_oft" and cfg.binarize_gripper))


def _fresh_policy(cfg: ModelConfig) -> Policy:
    if cfg.kind == "qwen_oft":
        from models.vla_loading import load_qwen_oft

        return load_qwen_oft(cfg)
    if cfg.kind == "openvla_oft":
        from models.vla_loading import load_openvla_oft

        return load_openvla_oft(cfg)
    if cfg.kind == "token_ar":
        from models.vla_loading import load_token_ar

        return load_token_ar(cfg)
    if cfg.kind == "cnn_gaussian":
        from models.cnn_policy import CNNGaussianPolicy

        cnn = cfg.cnn
        return CNNGaussianPolicy(
            num_action_chunks=cfg.num_action_chunks, action_dim=cfg.action_dim,
            state_dim=cfg.state_dim, hidden_dim=cnn.hidden_dim,
            conv_channels=cnn.conv_channels, embed_dim=cnn.embed_dim,
            vocab_size=cnn.vocab_size, init_log_std=cfg.init_log_std,
            value_head=cfg.value_head, image_resolution=cnn.image_resolution,
            use_wrist=cnn.wrist_camera, read_state=cnn.read_state)
    raise ValueError(f"unknown model.kind {cfg.kind!r}; valid: ['cnn_gaussian', 'qwen_oft', "
                     "'openvla_oft', 'token_ar']")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


__all__ = ["Evaluation", "Policy", "PolicyOutput", "build_policy", "load_checkpoint",
           "pick_device"]
