"""From complete GRPO groups of episodes to one training batch of chunks (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from envs.base import EnvObs
from learner.algorithms import equal_score_groups, grpo_advantages
from protocol.messages import Trajectory


@dataclass(frozen=True)
class TrainBatch:
    """N chunks: obs at chunk start, actions [N,T,D], old_logprobs [N,T,D] (behaviour),
    advantages [N] (of the chunk's episode), mask [N,T] (executed actions),
    versions [N] (policy version that acted)."""

    obs: EnvObs
    actions: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    versions: torch.Tensor

    def __len__(self) -> int:
        return self.actions.shape[0]


def episode_scores(episodes: list[Trajectory]) -> torch.Tensor:
    """The GRPO score of each episode: its return."""
    return torch.tensor([ep.episode_return for ep in episodes], dtype=torch.float32)


def group_lag(group: list[Trajectory], version: int) -> int:
    """How many versions behind ``version`` the oldest chunk of ``group`` was acted."""
    return version - min(int(ep.policy_versions.min()) for ep in group)


def informative_groups(groups: list[list[Trajectory]]) -> list[list[Trajectory]]:
    """The groups whose scores are not all equal (the others carry no GRPO signal)."""
    return [g for g in groups
            if not bool(equal_score_groups(episode_scores(g), len(g))[0])]


def within_mean_bounds(group: list[Trajectory], bounds) -> bool:
    """Whether the group's mean score lies in [low, high] (always, with no bounds)."""
    if not bounds:
        return True
    mean = float(episode_scores(group).mean())
    return bounds[0] <= mean <= bounds[1]


def build_batch(groups: list[list[Trajectory]]) -> TrainBatch:
    """Stack the chunks of every episode of ``groups``; advantages are group-relative."""
    episodes = [ep for g in groups for ep in g]
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups of different sizes {sorted(sizes)} in one batch")
    adv_per_episode = grpo_advantages(episode_scores(episodes), sizes.pop())
    chunks = [len(ep.actions) for ep in episodes]
    cat = (lambda name: np.concatenate([getattr(ep, name) for ep in episodes]))
    t = episodes[0].actions.shape[1]
    executed = torch.from_numpy(cat("executed").astype(np.int64))
    wrist = cat("wrist_images") if episodes[0].wrist_images is not None else None
    obs = EnvObs(cat("main_images"), cat("states"),
                 [ep.task_description for ep, n in zip(episodes, chunks) for _ in range(n)],
                 wrist_images=wrist)
    return TrainBatch(
        obs=obs,
        actions=torch.from_numpy(cat("actions")),
        old_logprobs=torch.from_numpy(cat("logprobs")),
        advantages=torch.repeat_interleave(adv_per_episode, torch.tensor(chunks)),
        mask=torch.arange(t).unsqueeze(0) < executed.unsqueeze(1),
        versions=torch.from_numpy(cat("policy_versions")))

