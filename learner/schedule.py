"""Learning-rate schedules: linear warmup, then constant or cosine decay (per update)."""

from __future__ import annotations

import math

import torch

from configs import LearnerConfig


def lr_factor(step: int, warmup: int, schedule: str, decay_steps: int,
              min_ratio: float) -> float:
    """The share of the peak learning rate used at update ``step`` (0-based).

    Warmup: (step + 1) / warmup for the first ``warmup`` updates, so the first update
    already moves. Then 1 (constant), or cosine from 1 to ``min_ratio`` over
    ``decay_steps`` updates, staying at ``min_ratio`` after.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; use constant or cosine")
    progress = min(1.0, (step - warmup) / max(decay_steps, 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: LearnerConfig,
                   total_updates: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR over the optimizer's groups: the policy's ("actor") and, when
    present, the value head's ("critic", with its own warmup). Step it once per update."""
    decay = cfg.lr_decay_steps or max(total_updates - cfg.lr_warmup_steps, 1)
    warmups = {"actor": cfg.lr_warmup_steps, "critic": cfg.ppo.critic_lr_warmup_steps}
    lambdas = [
        (lambda step, w=warmups[group["name"]]:
         lr_factor(step, w, cfg.lr_schedule, decay, cfg.min_lr_ratio))
        for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
