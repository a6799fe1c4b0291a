"""The policy interface that inference servers and the learner use, for every model.

A policy turns an :class:`envs.EnvObs` batch into model inputs (``prepare``), samples an
action chunk [B,T,D] with per-dimension log-probs (``act``), and re-scores given actions
(``evaluate``) for the learner. VLA models (QwenOFT, OpenVLA-OFT) implement the same three.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from envs.base import EnvObs

# The linear layers of a Llama/Qwen decoder that LoRA adapts by default.
LLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                    "down_proj"]


def camera_views(obs: EnvObs, use_wrist: bool) -> list[np.ndarray]:
    """The image batches a policy reads: main, and wrist when ``use_wrist``."""
    if not use_wrist:
        return [obs.main_images]
    if obs.wrist_images is None:
        raise ValueError("the policy reads the wrist camera (model.use_wrist_image, or "
                         "model.cnn.wrist_camera) but the env sends none; set "
                         "env.wrist_camera=true")
    return [obs.main_images, obs.wrist_images]


@dataclass(frozen=True)
class PolicyOutput:
    """``act``'s result: actions float32 [B,T,D] in env units, logprobs [B,T,D] of those
    actions under the acting distribution, values [B] or None without a value head."""

    actions: torch.Tensor
    logprobs: torch.Tensor
    values: Optional[torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """``evaluate``'s result: logprobs [B,T,D], entropy [B,T,D], values [B] or None."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: Optional[torch.Tensor]


class Policy(nn.Module, abc.ABC):
    """A chunked action policy: T actions of D dimensions per forward pass."""

    num_action_chunks: int
    action_dim: int
    has_value_head: bool
    use_wrist: bool = False  # whether ``prepare`` reads the observation's wrist camera

    @abc.abstractmethod
    def prepare(self, obs: EnvObs, device: torch.device) -> dict:
        """Model inputs (tensors on ``device``) for an observation batch."""

    @abc.abstractmethod
    def act(self, inputs: dict, deterministic: bool, temperature: float) -> PolicyOutput:
        """Sample (or take the mode of) an action chunk for each row."""

    @abc.abstractmethod
    def evaluate(self, inputs: dict, actions: torch.Tensor, temperature: float) -> Evaluation:
        """Log-probs and entropy of ``actions`` [B,T,D]; gradients flow."""

    def bc_loss(self, inputs: dict, actions: torch.Tensor, mask: torch.Tensor,
                kind: str = "auto") -> torch.Tensor:
        """Behaviour cloning: the loss of target chunks ``actions`` [B,T,D] (env units,
        the policy's gripper convention), averaged over the steps where ``mask`` [B,T] is
        true. ``kind``: ``auto`` is the model family's own training loss."""
        raise NotImplementedError(f"{type(self).__name__} has no behaviour-cloning loss")


def masked_chunk_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B,T,D] (or [B,T]) over the steps where ``mask`` [B,T] is true."""
    m = mask.to(values.dtype)
    if values.dim() == 3:
        return (values * m.unsqueeze(-1)).sum() / (m.sum() * values.shape[-1]).clamp_min(1)
    return (values * m).sum() / m.sum().clamp_min(1)


def rlinf_value_head(hidden: int) -> nn.Module:
    """RLinf's value head for a language-model backbone: an MLP from one hidden state to
    one value (the token-decoding VLAs read the last prompt token)."""
    return nn.Sequential(nn.Linear(hidden, 512), nn.GELU(), nn.Linear(512, 128), nn.GELU(),
                         nn.Linear(128, 1, bias=False))


def unwrap(model: nn.Module) -> nn.Module:
    """The model under peft's LoRA wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
