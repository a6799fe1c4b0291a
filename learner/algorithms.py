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
                   denominator: float | None = None,
                   prox_logprobs: torch.Tensor | None = None, behav_weight_cap: float = 0.0,
                   aggregation: str = "token-mean") -> tuple[torch.Tensor, dict]:
    """Clipped-ratio policy loss with dual clip.

    ``logprobs``/``old_logprobs`` [N,T,D]; ``advantages`` [N] (one per chunk, broadcast
    over its actions); ``mask`` [N,T] marks executed actions. The ratio is taken per
    action dimension, per action or per chunk (``ratio_level``). Per element:
        l1 = -A r,  l2 = -A clip(r, 1 - low, 1 + high),  l = max(l1, l2)
        for A < 0 (dual clip): l = min(l, -A c)
    With ``prox_logprobs`` (decoupled PPO, for stale data) the ratio is taken against the
    proximal policy (the learner's weights when the update began) and each element's loss
    is weighted by pi_prox / pi_behav (``old_logprobs`` are the behaviour's), truncated at
    ``behav_weight_cap``. Returns the ``aggregation`` of l over valid elements (with
    ``denominator`` as its count, so micro-batches add up to the global value) and
    float metrics.
    """
    new, elem_mask = ratio_level_view(logprobs, mask, ratio_level)
    old, _ = ratio_level_view(old_logprobs, mask, ratio_level)
    weight = truncated = None
    if prox_logprobs is not None:
        prox, _ = ratio_level_view(prox_logprobs, mask, ratio_level)
        weight, truncated = behaviour_weights(prox, old, behav_weight_cap)
        old = prox
    adv = advantages.view(-1, *([1] * (new.ndim - 1))).expand_as(new)
    log_ratio = (new - old).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss1, loss2 = -adv * ratio, -adv * clipped
    clip_loss = torch.maximum(loss1, loss2)
    dual = torch.minimum(clip_loss, -adv * clip_ratio_c)
    losses = torch.where(adv < 0, dual, clip_loss)
    if weight is not None:
        losses = losses * weight
    loss = aggregate(losses, elem_mask, aggregation, denominator)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean((loss2 > loss1).float(), elem_mask).item(),
            "dual_clip_fraction": masked_mean(((adv < 0) & (dual < clip_loss)).float(),
                                              elem_mask).item(),
            "approx_kl": masked_mean(-log_ratio, elem_mask).item(),
            "clipped_ratio": masked_mean(clipped, elem_mask).item(),
            "ratio_mean": masked_mean(ratio, elem_mask).item(),
        }
        if weight is not None:
            metrics["behav_weight_mean"] = masked_mean(weight, elem_mask).item()
            metrics["behav_weight_truncated"] = masked_mean(truncated.float(),
                                                            elem_mask).item()
    return loss, metrics


def valid_elements(mask: torch.Tensor, action_dim: int, ratio_level: str) -> float:
    """How many elements ``ppo_actor_loss`` averages over for ``mask`` [N,T]."""
    if ratio_level == "action_dim":
        return float(mask.sum()) * action_dim
    if ratio_level == "action":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


# --- PPO: advantages, value loss, aggregation, stale-data correction ------------------

def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                   terminal: torch.Tensor, episode_end: torch.Tensor,
                   gamma: float | torch.Tensor, lam: float) -> tuple[torch.Tensor,
                                                                    torch.Tensor]:
    """Generalised advantage estimation over chunk steps, episodes concatenated in time
    order (all 1-D, one entry per chunk).

    ``next_values[t]`` is V of the state after step t: the next chunk's value inside an
    episode, the bootstrap V(final observation) at a truncation; ignored where
    ``terminal[t]`` (the episode ended by success or failure: no future). ``episode_end``
    marks the last step of each episode, where the recursion restarts. ``gamma`` is one
    discount, or one per step (gamma ** actions executed, for action-level rewards).
        delta_t = r_t + gamma_t * (1 - terminal_t) * V'_t - V_t
        A_t     = delta_t + gamma_t * lam * (1 - end_t) * A_{t+1}
    Returns (advantages, returns = advantages + values).
    """
    not_terminal = 1.0 - terminal.float()
    not_end = 1.0 - episode_end.float()
    discount = torch.as_tensor(gamma, dtype=torch.float32).expand(rewards.shape)
    delta = rewards.float() + discount * not_terminal * next_values.float() - values.float()
    adv = torch.zeros_like(delta)
    running = torch.zeros(())
    for t in range(len(delta) - 1, -1, -1):
        running = delta[t] + discount[t] * lam * not_end[t] * running
        adv[t] = running
    return adv, adv + values.float()


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A - mean) / (unbiased std + eps) over the valid entries; invalid entries -> 0."""
    valid = adv[mask.bool()]
    if valid.numel() < 2:
        return torch.where(mask.bool(), adv - valid.mean() if valid.numel() else adv,
                           torch.zeros_like(adv))
    out = (adv - valid.mean()) / (valid.std(unbiased=True) + EPS)
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    """0.5 x^2 for |x| <= delta, else delta (|x| - 0.5 delta)."""
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float, huber_delta: float,
               denominator: float | None = None) -> tuple[torch.Tensor, dict]:
    """PPO's clipped value loss with a Huber penalty, per chunk ([N] tensors):
        v_c = v_old + clip(v - v_old, -clip, clip)
        l   = max(huber(v - R), huber(v_c - R))
    Mean over valid chunks (sum / ``denominator`` when given). Metric
    ``value_clip_ratio``: share of chunks where the clipped term is the larger.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    l1, l2 = huber(values - returns, huber_delta), huber(clipped - returns, huber_delta)
    m = mask.float()
    loss = masked_mean(torch.maximum(l1, l2), m, denominator)
    with torch.no_grad():
        ratio = masked_mean((l2 > l1).float(), m).item()
    return loss, {"value_clip_ratio": ratio}


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid chunks (nan when Var(R) is 0)."""
    m = mask.bool()
    r, v = returns[m].float(), values[m].float()
    var = r.var(unbiased=True) if r.numel() > 1 else torch.tensor(0.0)
    if float(var) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var(unbiased=True) / var)


AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def aggregate(losses: torch.Tensor, mask: torch.Tensor, mode: str,
              denominator: float | None = None) -> torch.Tensor:
    """Reduce per-element ``losses`` [N, ...] over the valid elements of ``mask`` (same
    shape; dim 0 is the sequence, here a chunk):
      token-mean          sum of all valid elements / their count
      seq-mean-token-sum  per sequence the sum of its valid elements, mean over sequences
      seq-mean-token-mean per sequence the mean of its valid elements, mean over sequences
    A sequence without valid elements does not count. ``denominator`` replaces the
    count (elements, or sequences) so that micro-batches add up to the global mean.
    """
    m = mask.to(losses.dtype)
    if mode == "token-mean":
        return masked_mean(losses, m, denominator)
    flat_l, flat_m = (losses * m).flatten(1), m.flatten(1)
    per_seq = flat_l.sum(1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / flat_m.sum(1).clamp_min(1.0)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {list(AGGREGATIONS)}")
    seqs = (flat_m.sum(1) > 0).to(losses.dtype)
    return masked_mean(per_seq, seqs, denominator)


def aggregation_units(mask: torch.Tensor, mode: str) -> float:
    """The count :func:`aggregate` divides by for ``mask`` (for a global denominator)."""
    if mode == "token-mean":
        return float(mask.sum())
    return float((mask.flatten(1).sum(1) > 0).sum())


def behaviour_weights(prox_logprobs: torch.Tensor, behav_logprobs: torch.Tensor,
                      cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled PPO's importance weight pi_prox / pi_behav per element, truncated at
    ``cap`` (<= 0: not truncated); returns (weights, truncated mask). No gradient."""
    w = torch.exp((prox_logprobs - behav_logprobs).clamp(-20.0, 20.0)).detach()
    truncated = w > cap if cap > 0 else torch.zeros_like(w, dtype=torch.bool)
    return (w.clamp(max=cap) if cap > 0 else w), truncated


def kl_to_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-element k3 estimate of KL(pi || pi_ref): exp(d) - d - 1, d = ref - new (>= 0)."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0
