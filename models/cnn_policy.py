"""A small CPU policy: image encoder + instruction embedding + state -> Gaussian chunk.

The image is resized to ``image_resolution`` and encoded by a few convolutions. The
instruction (a bag of hashed words) attends over the feature map: each of ``heads``
queries computed from the instruction scores every location, and the softmax-weighted
mean of the location coordinates says where the named thing is ("red" finds red
pixels). With ``use_wrist`` the wrist camera gets an encoder and queries of its own (the
same recipe; a different viewpoint, so no shared weights): where the object sits in the
gripper's view is what a grasp is aligned on. Attended coordinates, instruction and
state (unless ``read_state`` is off: a world model's env gives zeros) feed an MLP that
outputs the mean of all T x D actions at once; the log-std is one learnable parameter per
action dimension, independent of the state.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from envs.base import EnvObs
from models.base import Evaluation, Policy, PolicyOutput, camera_views, masked_chunk_mean

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def hash_words(texts: list, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag inputs for ``texts``: word ids (stable crc32 hashes) and offsets."""
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(zlib.crc32(w.encode()) % vocab_size for w in text.lower().split() or [""])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def expected_coordinates(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Softmax over the h*w locations of ``logits`` [B,K,h*w] -> expected (x, y) [B,2K]."""
    attn = logits.softmax(-1).view(*logits.shape[:2], h, w)
    ys = torch.linspace(-1, 1, h, device=logits.device)
    xs = torch.linspace(-1, 1, w, device=logits.device)
    return torch.cat([(attn.sum(2) * xs).sum(-1), (attn.sum(3) * ys).sum(-1)], dim=1)


def locator_layers(c: int, embed_dim: int, heads: int) -> tuple[nn.Module, ...]:
    """One camera's encoder (two convolutions), its keys and the instruction's queries."""
    return (nn.Conv2d(3, c, 3, stride=1, padding=1), nn.Conv2d(c, c, 3, stride=2, padding=1),
            nn.Conv2d(c + 3, c, 1),  # conv features and the raw colour of each place
            nn.Linear(embed_dim, heads * c))


class WristLocator(nn.Module):
    """The wrist camera's :func:`locator_layers`, named as the main camera's are."""

    def __init__(self, c: int, embed_dim: int, heads: int):
        super().__init__()
        self.conv1, self.conv2, self.keys, self.query = locator_layers(c, embed_dim, heads)


class CNNGaussianPolicy(Policy):
    """The small policy of the synthetic task and the CPU test configs."""

    def __init__(self, num_action_chunks: int = 8, action_dim: int = 7, state_dim: int = 8,
                 hidden_dim: int = 128, conv_channels: int = 16, embed_dim: int = 32,
                 vocab_size: int = 1024, init_log_std: float = -0.5, value_head: bool = False,
                 image_resolution: int = 64, heads: int = 4, use_wrist: bool = False,
                 read_state: bool = True):
        super().__init__()
        self.num_action_chunks, self.action_dim = num_action_chunks, action_dim
        self.state_dim, self.vocab_size, self.read_state = state_dim, vocab_size, read_state
        self.image_resolution, self.use_wrist = image_resolution, use_wrist
        self.has_value_head = value_head
        c, self.heads = conv_channels, heads
        # The main camera's locator stays at the top level (the checkpoint layout of
        # policies without a wrist camera); the wrist camera's is a WristLocator.
        self.conv1, self.conv2, self.keys, self.query = locator_layers(c, embed_dim, heads)
        self.wrist = WristLocator(c, embed_dim, heads) if use_wrist else None
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="sum")
        # Sharp attention from the start, so coordinates move when the query changes.
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(10.0)))
        cameras = 2 if use_wrist else 1
        self.trunk = nn.Sequential(
            nn.Linear(2 * heads * cameras + embed_dim + state_dim * read_state, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.mean_head = nn.Linear(hidden_dim, num_action_chunks * action_dim)
        nn.init.zeros_(self.mean_head.bias)
        self.mean_head.weight.data.mul_(0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.value_head = nn.Linear(hidden_dim, 1) if value_head else None

    @override
    def prepare(self, obs: EnvObs, device: torch.device) -> dict:
        if self.read_state and obs.states.shape[1] != self.state_dim:
            raise ValueError(f"observation state has {obs.states.shape[1]} dims but the "
                             f"model expects model.state_dim={self.state_dim}")
        views = camera_views(obs, self.use_wrist)
        ids, offsets = hash_words(obs.task_descriptions, self.vocab_size)
        inputs = {name: torch.from_numpy(np.asarray(images)).to(device)
                  for name, images in zip(("images", "wrist_images"), views)}
        inputs.update(word_ids=ids.to(device), word_offsets=offsets.to(device))
        if self.read_state:  # (a world model's zero state is not even copied)
            inputs["states"] = torch.from_numpy(np.asarray(obs.states, np.float32)).to(device)
        return inputs

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> float [B,3,r,r] in [0,1], a slice at a time: the float copy
        of a full 224x224 batch would be the largest allocation of a training step."""
        size = (self.image_resolution,) * 2
        parts = []
        for part in images.split(16):
            x = part.permute(0, 3, 1, 2).float()
            parts.append(x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="area"))
        return torch.cat(parts).div_(255.0)

    def _locate(self, images: torch.Tensor, text: torch.Tensor, layers: nn.Module
                ) -> torch.Tensor:
        """Where each instruction query attends in one camera's images: [B, 2*heads].
        ``layers``: the policy itself (main camera) or its :class:`WristLocator`."""
        x = self._resize(images)
        feats = F.relu(layers.conv2(F.relu(layers.conv1(x))))
        b, c, h, w = feats.shape
        colour = F.avg_pool2d(x, 2) * 2 - 1
        k = layers.keys(torch.cat([feats, colour], 1)).flatten(2)   # [B,C,h*w]
        q = layers.query(text).view(b, self.heads, c)               # [B,heads,C]
        scale = self.log_sharpness.exp() / math.sqrt(c)
        return expected_coordinates(q @ k * scale, h, w)

    def _features(self, inputs: dict) -> torch.Tensor:
        text = self.embed(inputs["word_ids"], inputs["word_offsets"])
        where = [self._locate(inputs["images"], text, self)]
        if self.wrist is not None:
            where.append(self._locate(inputs["wrist_images"], text, self.wrist))
        state = [inputs["states"]] if self.read_state else []
        return self.trunk(torch.cat([*where, text, *state], dim=1))

    def _distribution(self, inputs: dict, temperature: float):
        z = self._features(inputs)
        mean = self.mean_head(z).view(-1, self.num_action_chunks, self.action_dim)
        log_std = self.log_std + math.log(temperature)
        values = self.value_head(z).squeeze(-1) if self.value_head is not None else None
        return mean, log_std.expand_as(mean), values

    @staticmethod
    def _log_prob(actions, mean, log_std):
        return -0.5 * ((actions - mean) * torch.exp(-log_std)) ** 2 - log_std - LOG_SQRT_2PI

    @override
    @torch.no_grad()
    def act(self, inputs: dict, deterministic: bool, temperature: float) -> PolicyOutput:
        mean, log_std, values = self._distribution(inputs, temperature)
        actions = mean if deterministic else mean + torch.randn_like(mean) * log_std.exp()
        return PolicyOutput(actions, self._log_prob(actions, mean, log_std), values)

    @override
    def evaluate(self, inputs: dict, actions: torch.Tensor, temperature: float) -> Evaluation:
        mean, log_std, values = self._distribution(inputs, temperature)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).expand_as(mean)
        return Evaluation(self._log_prob(actions, mean, log_std), entropy, values)

    def bc_loss(self, inputs: dict, actions: torch.Tensor, mask: torch.Tensor,
                kind: str = "auto") -> torch.Tensor:
        """``nll`` (``auto``): the Gaussian's negative log-likelihood, which fits the mean
        and the log-std; ``mse``: squared error of the mean (the log-std untouched)."""
        mean, log_std, _ = self._distribution(inputs, 1.0)
        if kind in ("auto", "nll"):
            return masked_chunk_mean(-self._log_prob(actions, mean, log_std), mask)
        if kind == "mse":
            return masked_chunk_mean((actions - mean) ** 2, mask)
        raise ValueError(f"sft.loss={kind!r} is not a loss of cnn_gaussian; use nll or mse")
