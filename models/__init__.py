"""Policies shared by the inference servers and the learner (:mod:`models.base`)."""

import torch

from configs import ModelConfig
from models.base import Evaluation, Policy, PolicyOutput


def build_policy(cfg: ModelConfig) -> Policy:
    """A freshly initialised policy of kind ``cfg.kind``."""
    if cfg.kind == "cnn_gaussian":
        from models.cnn_policy import CNNGaussianPolicy

        return CNNGaussianPolicy(
            num_action_chunks=cfg.num_action_chunks, action_dim=cfg.action_dim,
            state_dim=cfg.state_dim, hidden_dim=cfg.hidden_dim,
            conv_channels=cfg.conv_channels, embed_dim=cfg.embed_dim,
            vocab_size=cfg.vocab_size, init_log_std=cfg.init_log_std,
            value_head=cfg.value_head, image_resolution=cfg.image_resolution)
    raise ValueError(f"unknown model.kind {cfg.kind!r}; valid: ['cnn_gaussian']")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


__all__ = ["Evaluation", "Policy", "PolicyOutput", "build_policy", "pick_device"]
