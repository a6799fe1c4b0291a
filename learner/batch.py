"""From complete groups of episodes to one training batch of chunks (pure).

GRPO's advantages are known here (group-relative scores). PPO's need the value of the
states where truncated episodes stopped, so the batch carries :class:`ValueTargets` and
the learner finishes them (``learner/targets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from envs import observation_fields
from envs.base import EnvObs
from learner.algorithms import equal_score_groups, grpo_advantages
from protocol.messages import Trajectory


@dataclass(frozen=True)
class ValueTargets:
    """What PPO's GAE needs, per chunk [N] in episode time order:
    rewards (the chunk's reward; at action level discounted inside the chunk),
    discounts (to the next chunk: gamma, or gamma ** executed actions), values (the
    behaviour's value estimate), terminal (ended by success or failure: no future),
    episode_end (the episode's last chunk); final_obs: one row per truncated episode,
    the state its last step reached, whose value bootstraps chunk ``final_rows[i]``."""

    rewards: torch.Tensor
    discounts: torch.Tensor
    values: torch.Tensor
    terminal: torch.Tensor
    episode_end: torch.Tensor
    final_obs: Optional[EnvObs]
    final_rows: torch.Tensor


@dataclass(frozen=True)
class TrainBatch:
    """N chunks: obs at chunk start, actions [N,T,D], old_logprobs [N,T,D] (behaviour),
    advantages [N] (of the chunk; PPO: zeros until the learner computes them), mask [N,T]
    (executed actions), versions [N] (policy version that acted); PPO: ``targets``."""

    obs: EnvObs
    actions: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    versions: torch.Tensor
    targets: Optional[ValueTargets] = None

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


def group_verdict(group: list[Trajectory], version: int, cfg) -> str:
    """Why the learner (``cfg``: its LearnerConfig, at policy ``version``) does not train
    on ``group``, checked in this order; "" when it does:

    * ``sim_failed``: a simulator error cut an episode short, so its score says nothing
      about the policy (and GRPO compares within the group);
    * ``stale``: acted more than ``max_staleness`` versions ago;
    * ``filtered`` (GRPO, ``filter_equal_groups``): every score equal, no signal;
    * ``out_of_bounds`` (GRPO): the mean score outside ``group_mean_bounds``.
    """
    grpo = cfg.algorithm == "grpo"  # the score filters are GRPO's; PPO needs no groups
    if any(ep.env_error for ep in group):
        return "sim_failed"
    if group_lag(group, version) > cfg.max_staleness:
        return "stale"
    if grpo and cfg.grpo.filter_equal_groups and not informative_groups([group]):
        return "filtered"
    if grpo and not within_mean_bounds(group, cfg.grpo.group_mean_bounds):
        return "out_of_bounds"
    return ""


def within_mean_bounds(group: list[Trajectory], bounds) -> bool:
    """Whether the group's mean score lies in [low, high] (always, with no bounds)."""
    if not bounds:
        return True
    mean = float(episode_scores(group).mean())
    return bounds[0] <= mean <= bounds[1]


def build_batch(groups: list[list[Trajectory]], algorithm: str = "grpo", gamma: float = 1.0,
                reward_level: str = "chunk") -> TrainBatch:
    """Stack the chunks of every episode of ``groups``. GRPO: advantages are
    group-relative; PPO: the batch carries the GAE inputs (``gamma``, ``reward_level``)."""
    episodes = [ep for g in groups for ep in g]
    chunks = [len(ep.actions) for ep in episodes]
    if algorithm == "ppo":
        advantages = torch.zeros(sum(chunks))
        targets = value_targets(episodes, gamma, reward_level)
    else:
        sizes = {len(g) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"groups of different sizes {sorted(sizes)} in one batch")
        adv_per_episode = grpo_advantages(episode_scores(episodes), sizes.pop())
        advantages = torch.repeat_interleave(adv_per_episode, torch.tensor(chunks))
        targets = None

    def cat(name):
        return np.concatenate([getattr(ep, name) for ep in episodes])

    t = episodes[0].actions.shape[1]
    executed = torch.from_numpy(cat("executed").astype(np.int64))
    return TrainBatch(
        obs=observation_fields.from_trajectories(episodes),
        actions=torch.from_numpy(cat("actions")),
        old_logprobs=torch.from_numpy(cat("logprobs")),
        advantages=advantages,
        mask=torch.arange(t).unsqueeze(0) < executed.unsqueeze(1),
        versions=torch.from_numpy(cat("policy_versions")), targets=targets)


def chunk_rewards(ep: Trajectory, gamma: float, reward_level: str) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Per chunk: (reward, discount to the next chunk). Chunk level: the actions' sum and
    gamma. Action level: sum_k gamma^k r_k over the executed actions and gamma^executed,
    so that discounting is per action while values stay per chunk."""
    if reward_level == "chunk":
        return ep.rewards.astype(np.float32), np.full(len(ep.rewards), gamma, np.float32)
    powers = gamma ** np.arange(ep.action_rewards.shape[1], dtype=np.float64)
    rewards = (ep.action_rewards * powers).sum(1)
    return rewards.astype(np.float32), (gamma ** ep.executed.astype(np.float64)).astype(
        np.float32)


def value_targets(episodes: list[Trajectory], gamma: float, reward_level: str) -> ValueTargets:
    """The GAE inputs of ``episodes`` (see :class:`ValueTargets`)."""
    missing = [ep.episode_id for ep in episodes if ep.values is None]
    if missing:
        raise ValueError(f"PPO needs behaviour values, but episode {missing[0]} has none: "
                         "the inference servers must run a policy with model.value_head=true")
    rewards, discounts, ends, terminal, finals, final_rows = [], [], [], [], [], []
    row = 0
    for ep in episodes:
        r, d = chunk_rewards(ep, gamma, reward_level)
        rewards.append(r)
        discounts.append(d)
        end = np.zeros(len(r), bool)
        end[-1] = True
        ends.append(end)
        terminal.append(end & (not ep.truncated))
        row += len(r)
        if ep.truncated and ep.final_main_image is not None:
            finals.append(ep)
            final_rows.append(row - 1)
    final_obs = observation_fields.final_observations(finals) if finals else None

    def t(parts):
        return torch.from_numpy(np.concatenate(parts))

    return ValueTargets(
        rewards=t(rewards), discounts=t(discounts),
        values=t([ep.values for ep in episodes]).float(), terminal=t(terminal),
        episode_end=t(ends), final_obs=final_obs,
        final_rows=torch.tensor(final_rows, dtype=torch.long))

