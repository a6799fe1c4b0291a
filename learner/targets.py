"""PPO's advantages and value targets for a batch, once the bootstrap values are known."""

from __future__ import annotations

import torch

from learner.algorithms import explained_variance, gae_advantages, normalize_advantages
from learner.batch import ValueTargets


def next_values(targets: ValueTargets, bootstrap: torch.Tensor) -> torch.Tensor:
    """V of the state after each chunk: the next chunk's behaviour value inside an
    episode, ``bootstrap`` [M] (V of the final state) at a truncation, 0 after a
    terminal chunk (GAE ignores it there)."""
    nxt = torch.roll(targets.values, -1)
    nxt[targets.episode_end] = 0.0
    if len(targets.final_rows):
        nxt[targets.final_rows] = bootstrap.float()
    return nxt


def ppo_advantages(targets: ValueTargets, bootstrap: torch.Tensor, valid: torch.Tensor,
                   gae_lambda: float, normalize: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                dict]:
    """GAE over the batch's chunks: (advantages [N], returns [N], rollout metrics).
    ``valid`` [N] marks chunks that count (every chunk with an executed action)."""
    adv, returns = gae_advantages(targets.rewards, targets.values,
                                  next_values(targets, bootstrap), targets.terminal,
                                  targets.episode_end, targets.discounts, gae_lambda)
    metrics = {
        "train/critic/explained_variance": explained_variance(targets.values, returns, valid),
        "rollout/values_mean": float(targets.values[valid].mean()),
        "rollout/returns_mean": float(returns[valid].mean()),
        "rollout/truncated_bootstraps": float(len(targets.final_rows)),
    }
    if normalize:
        adv = normalize_advantages(adv, valid)
    return adv, returns, metrics
