"""The math of the learner, as small pure functions (no state, no I/O).

Shapes: N chunks in a batch, T actions per chunk, D action dimensions.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def grpo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group-relative advantages, as in RLinf's embodied GRPO.

    ``scores``: 1-D episode returns, groups of ``group_size`` consecutive entries.
    Returns (score - group mean) / (unbiased group std + 1e-6), and 0 for every member of
    a group whose scores are all equal (no signal; this also covers G = 1).
    """
    if scores.ndim != 1 or scores.numel() % group_size:
        raise ValueError(f"scores must be 1-D with a multiple of {group_size} entries")
    groups = scores.float().view(-1, group_size)
    equal = equal_score_groups(scores, group_size).unsqueeze(1)
    std = groups.std(dim=1, unbiased=True, keepdim=True) if group_size > 1 else \
        torch.zeros_like(groups[:, :1])
    adv = (groups - groups.mean(dim=1, keepdim=True)) / (std + EPS)
    return torch.where(equal, torch.zeros_like(adv), adv).flatten()


def equal_score_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool per group: all of its scores are equal (such groups may be filtered out)."""
    groups = scores.view(-1, group_size)
    return (groups == groups[:, :1]).all(dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denominator: float | None = None):
    """Mean of ``x`` over the True entries of ``mask`` (or sum / ``denominator``)."""
    total = (x * mask).sum()
    count = mask.sum() if denominator is None else denominator
    return total / max(float(count), 1.0)


def ratio_level_view(logprobs: torch.Tensor, mask: torch.Tensor, level: str):
    """Log-probs and mask at the level the importance ratio is taken.

    ``logprobs`` [N,T,D], ``mask`` [N,T] (valid actions). Returns, for ``level``:
    "action_dim": [N,T,D] and the mask broadcast; "action": per-action sums [N,T];
    "chunk": per-chunk sums over valid actions [N] with mask "any valid action".
    """
    m = mask.to(logprobs.dtype)
    if level == "action_dim":
        return logprobs, m.unsqueeze(-1).expand_as(logprobs)
    if level == "action":
        return logprobs.sum(-1), m
    if level == "chunk":
        return (logprobs.sum(-1) * m).sum(-1), (m.sum(-1) > 0).to(logprobs.dtype)
    raise ValueError(f"unknown ratio level {level!r}; use action_dim, action or chunk")


def ppo_actor_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                   advantages: torch.Tensor, mask: torch.Tensor, clip_ratio_low: float,
                   clip_ratio_high: float, clip_ratio_c: float, ratio_level: str,
                   denominator: float | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped-ratio policy loss with dual clip.

    ``logprobs``/``old_logprobs`` [N,T,D]; ``advantages`` [N] (one per chunk, broadcast
    over its actions); ``mask`` [N,T] marks executed actions. The ratio is taken per
    action dimension, per action or per chunk (``ratio_level``). Per element:
        l1 = -A r,  l2 = -A clip(r, 1 - low, 1 + high),  l = max(l1, l2)
        for A < 0 (dual clip): l = min(l, -A c)
    Returns the mean of l over valid elements (sum / ``denominator`` when given, so that
    micro-batches add up to the global mean) and float metrics.
    """
    new, elem_mask = ratio_level_view(logprobs, mask, ratio_level)
    old, _ = ratio_level_view(old_logprobs, mask, ratio_level)
    adv = advantages.view(-1, *([1] * (new.ndim - 1))).expand_as(new)
    log_ratio = (new - old).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss1, loss2 = -adv * ratio, -adv * clipped
    clip_loss = torch.maximum(loss1, loss2)
    dual = torch.minimum(clip_loss, -adv * clip_ratio_c)
    losses = torch.where(adv < 0, dual, clip_loss)
    loss = masked_mean(losses, elem_mask, denominator)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((loss2 > loss1).float(), elem_mask).item(),
            "dual_clip_fraction": masked_mean(((adv < 0) & (dual < clip_loss)).float(),
                                              elem_mask).item(),
            "approx_kl": masked_mean(-log_ratio, elem_mask).item(),
            "clipped_ratio": masked_mean(clipped, elem_mask).item(),
            "ratio_mean": masked_mean(ratio, elem_mask).item(),
        }
    return loss, metrics


def valid_elements(mask: torch.Tensor, action_dim: int, ratio_level: str) -> float:
    """How many elements ``ppo_actor_loss`` averages over for ``mask`` [N,T]."""
    if ratio_level == "action_dim":
        return float(mask.sum()) * action_dim
    if ratio_level == "action":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())
