"""The learner's pure core: one GRPO update on a batch (no sockets, no files)."""

from __future__ import annotations

import torch

from configs import LearnerConfig
from envs.base import take
from learner.algorithms import masked_mean, ppo_actor_loss, valid_elements


def loss_units(mask: torch.Tensor, action_dim: int, cfg: LearnerConfig) -> float:
    """What the policy loss is averaged over: valid elements (token-mean) or valid chunks."""
    if cfg.loss_aggregation == "token-mean":
        return valid_elements(mask, action_dim, cfg.ratio_level)
    return float((mask.sum(-1) > 0).sum())
from learner.batch import TrainBatch
from models.base import Policy


class Learner:
    """Owns the policy's optimiser; ``step(batch)`` does one update and returns metrics."""

    def __init__(self, policy: Policy, cfg: LearnerConfig, temperature: float,
                 device: torch.device, seed: int = 0):
        self.policy, self.cfg, self.device = policy, cfg, device
        self.temperature = temperature
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps,
                                          weight_decay=cfg.weight_decay)
        self.version = 0
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, batch: TrainBatch) -> dict:
        """One update: ``update_epochs`` passes of micro-batches accumulated to the batch."""
        cfg, d = self.cfg, self.policy.action_dim
        denom = loss_units(batch.mask, d, cfg)
        ent_denom = float(batch.mask.sum()) * d
        sums: dict = {}
        self.policy.train()
        # Decoupled PPO's proximal policy: these weights, before this update changes them.
        # The first epoch's forward passes run at them, so their log-probs are kept.
        self._prox = torch.zeros_like(batch.old_logprobs) if cfg.decoupled else None
        self._epoch = 0
        for self._epoch in range(cfg.update_epochs):
            order = torch.randperm(len(batch), generator=self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(batch), cfg.micro_batch_size):
                idx = order[start:start + cfg.micro_batch_size]
                weight = loss_units(batch.mask[idx], d, cfg) / max(denom, 1)
                pad = cfg.micro_batch_size - len(idx) if len(batch) > len(idx) else 0
                for key, value in self._micro_step(batch, idx, denom, ent_denom, pad).items():
                    sums[key] = sums.get(key, 0.0) + value * weight / cfg.update_epochs
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                       cfg.max_grad_norm)
            self.optimizer.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) / cfg.update_epochs
        self.version += 1
        adv = batch.advantages
        return {
            "train/actor/policy_loss": sums["policy_loss"],
            "train/actor/approx_kl": sums["approx_kl"],
            "train/actor/clip_fraction": sums["clip_fraction"],
            "train/actor/clipped_ratio": sums["clipped_ratio"],
            "train/actor/dual_clip_fraction": sums["dual_clip_fraction"],
            "train/actor/grad_norm": sums["grad_norm"],
            "train/actor/lr": self.optimizer.param_groups[0]["lr"],
            "train/entropy_loss": sums["entropy"],
            "train/loss": sums["loss"],
            "rollout/advantages_max": float(adv.max()),
            "rollout/advantages_mean": float(adv.mean()),
            "rollout/advantages_min": float(adv.min()),
            "rollout/policy_lag": float((self.version - 1 - batch.versions).float().mean()),
            **({"train/actor/behav_weight_mean": sums["behav_weight_mean"],
                "train/actor/behav_weight_truncated": sums["behav_weight_truncated"]}
               if cfg.decoupled else {}),
        }

    def _micro_step(self, batch: TrainBatch, idx: torch.Tensor, denom: float,
                    ent_denom: float, pad: int = 0) -> dict:
        """Forward and backward of the chunks ``idx``; ``pad`` masked-out repeats of its
        first rows keep every micro-batch of a step the same shape (steady allocations)."""
        cfg = self.cfg
        valid = batch.mask[idx]
        if pad:
            idx = torch.cat([idx, idx[:1].repeat(pad)])
            valid = torch.cat([valid, torch.zeros_like(valid[:1]).repeat(pad, 1)])
        inputs = self.policy.prepare(take(batch.obs, idx.numpy()), self.device)
        mask = valid.to(self.device)
        # bf16 autocast on CUDA for the model; the policies return fp32 log-probs, so the
        # ratio and loss below are computed in fp32.
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=cfg.bf16 and self.device.type == "cuda"):
            ev = self.policy.evaluate(inputs, batch.actions[idx].to(self.device),
                                      self.temperature)
        prox = None
        if self._prox is not None:
            real = idx[:len(idx) - pad] if pad else idx
            if self._epoch == 0:
                self._prox[real] = ev.logprobs[:len(real)].detach().float().cpu()
            prox = self._prox[idx].to(self.device)
        pg_loss, m = ppo_actor_loss(
            ev.logprobs, batch.old_logprobs[idx].to(self.device),
            batch.advantages[idx].to(self.device), mask, cfg.clip_ratio_low,
            cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.ratio_level, denominator=denom,
            prox_logprobs=prox, behav_weight_cap=cfg.behav_weight_cap,
            aggregation=cfg.loss_aggregation)
        entropy = masked_mean(ev.entropy, mask.unsqueeze(-1).expand_as(ev.entropy),
                              ent_denom)
        loss = pg_loss - cfg.entropy_coef * entropy
        loss.backward()
        # Per-micro-batch means, for metrics (the step re-weights them by valid share).
        share = max(loss_units(valid, self.policy.action_dim, cfg), 1) / max(denom, 1)
        ent_share = max(float(valid.sum()) * self.policy.action_dim, 1) / ent_denom
        return {"policy_loss": pg_loss.item() / share, "entropy": entropy.item() / ent_share,
                "loss": pg_loss.item() / share - cfg.entropy_coef * entropy.item() / ent_share,
                **m}
