"""The learner's pure core: one GRPO or PPO update on a batch (no sockets, no files)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Optional

import torch

from configs import LearnerConfig
from envs.base import take
from learner.algorithms import (
    aggregate, aggregation_units, kl_to_reference, masked_mean, ppo_actor_loss, ratio_level_view,
    valid_elements, value_loss,
)
from learner.batch import TrainBatch
from learner import data_parallel, sharding
from learner.data_parallel import DataParallel
from learner.schedule import make_scheduler
from learner.targets import ppo_advantages
from models.base import Policy

log = logging.getLogger(__name__)


def loss_units(mask: torch.Tensor, action_dim: int, cfg: LearnerConfig) -> float:
    """What the policy loss is averaged over: valid elements (token-mean) or valid chunks."""
    if cfg.loss_aggregation == "token-mean":
        return valid_elements(mask, action_dim, cfg.ratio_level)
    return aggregation_units(mask, cfg.loss_aggregation)


def param_groups(policy: Policy, cfg: LearnerConfig) -> list[dict]:
    """The optimizer's groups: "actor" (everything but the value head) and, with a value
    head, "critic" at ``critic_lr`` (0: lr)."""
    head = getattr(policy, "value_head", None)
    critic = [p for p in head.parameters() if p.requires_grad] if head is not None else []
    ids = {id(p) for p in critic}
    actor = [p for p in policy.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": actor, "lr": cfg.lr, "name": "actor"}]
    if critic:
        groups.append({"params": critic, "lr": cfg.ppo.critic_lr or cfg.lr, "name": "critic"})
    return groups


@dataclasses.dataclass
class UpdateState:
    """What one update carries through its passes, mini- and micro-batches (and nothing
    outlives it): the batch, the PPO returns, whether the actor loss is on (critic warmup),
    decoupled PPO's proximal log-probs (and whether the first pass fills them), the pass,
    and, until the first optimizer step, the log-prob drift's running sum and count."""

    batch: TrainBatch
    returns: Optional[torch.Tensor] = None
    train_actor: bool = True
    prox: Optional[torch.Tensor] = None
    fill_prox: bool = False
    epoch: int = 0
    first_step: bool = True
    drift_sum: float = 0.0
    drift_count: int = 0


class Learner:
    """Owns the policy's optimiser and schedule; ``step(batch)`` does one update and
    returns its metrics. ``version`` counts updates (the policy version)."""

    def __init__(self, policy: Policy, cfg: LearnerConfig, temperature: float,
                 device: torch.device, seed: int = 0, total_updates: int = 1,
                 dp: Optional[DataParallel] = None):
        self.policy, self.cfg, self.device = policy, cfg, device
        self.dp = dp  # a data-parallel rank: its share of each step's micro-batches
        self.temperature = temperature
        self.total_updates = total_updates
        self.rebuild_optimizer()
        # The KL penalty's anchor: the policy as it starts, frozen.
        self.reference = None
        if cfg.kl_beta > 0:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.version = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.nonfinite_steps_skipped = 0
        # Sharded (learner.sharding=fsdp): rank 0's unsharded CPU copy (learner.sharding).
        self.mirror: Optional[Policy] = None

    def rebuild_optimizer(self) -> None:
        """A fresh Adam and schedule over the policy's parameters as they are now."""
        cfg = self.cfg
        self.optimizer = torch.optim.Adam(param_groups(self.policy, cfg), lr=cfg.lr,
                                          eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_updates)

    @property
    def sharded(self) -> bool:
        """Whether the policy is sharded over data-parallel ranks (FSDP2)."""
        return self.dp is not None and self.dp.sharded

    @property
    def serving(self) -> Policy:
        """The policy whose weights the servers get and a checkpoint saves: the policy
        itself, or a sharded learner's mirror (rank 0), current after every update."""
        return self.mirror if self.mirror is not None else self.policy

    def full_state(self) -> tuple[dict, dict]:
        """(the model's, the optimizer's) state dicts in one rank's layout; sharded, a
        gather every rank joins (rank 0 orders it; the others return empty dicts)."""
        if not self.sharded:
            return self.policy.state_dict(), self.optimizer.state_dict()
        if self.dp.rank == 0:
            data_parallel.order_state()
        return sharding.full_state(self)

    def step(self, batch: TrainBatch) -> dict:
        """One update: ``update_epochs`` passes over the batch, each in mini-batches of
        ``global_batch_size`` chunks (one optimizer step each), each mini-batch in
        micro-batches whose gradients accumulate."""
        cfg, n = self.cfg, len(batch)
        rollout, returns = {}, None
        if batch.targets is not None:
            batch, returns, rollout = self._with_ppo_advantages(batch)
        size = min(cfg.global_batch_size or n, n)
        steps_per_epoch = -(-n // size)
        state = UpdateState(batch, returns,
                            train_actor=self.version >= cfg.ppo.critic_warmup_updates)
        self.policy.train()
        # Decoupled PPO's proximal policy: these weights, before this update changes
        # them. With one optimizer step per epoch the first epoch runs at them, so its
        # log-probs are kept; with more, a no-grad pass computes them first.
        if cfg.decoupled:
            # (a data-parallel rank sees only its micro-batches: it computes them all first)
            state.fill_prox = steps_per_epoch == 1 and self.dp is None
            state.prox = torch.zeros_like(batch.old_logprobs) if state.fill_prox else \
                self._logprobs_no_grad(batch)
        sums: dict = {}
        share = 1.0 / (cfg.update_epochs * steps_per_epoch)
        for state.epoch in range(cfg.update_epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, size):
                self._optimizer_step(state, order[start:start + size], sums, share)
        if self.dp is not None:  # every rank's micro-batches, and the drift they saw
            sums.update(drift_sum=state.drift_sum, drift_count=state.drift_count)
            sums = self.dp.sum_metrics(sums, same=("grad_norm",))
            state.drift_sum, state.drift_count = sums.pop("drift_sum"), sums.pop("drift_count")
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}  # this update's
        self.scheduler.step()
        self.version += 1
        if self.sharded:  # rank 0's mirror: what the servers get next
            sharding.refresh(self)
        return self._metrics(state, sums, rollout, lrs)

    def _optimizer_step(self, state: UpdateState, rows: torch.Tensor, sums: dict,
                        share: float) -> None:
        """Accumulate the gradients of mini-batch ``rows`` over micro-batches, then step."""
        cfg, d, batch = self.cfg, self.policy.action_dim, state.batch
        denoms = {"policy": loss_units(batch.mask[rows], d, cfg),
                  "entropy": float(batch.mask[rows].sum()) * d,
                  "chunks": float((batch.mask[rows].sum(-1) > 0).sum())}
        self.optimizer.zero_grad(set_to_none=True)
        starts = list(range(0, len(rows), cfg.micro_batch_size))
        for k, start in enumerate(starts):
            if self.dp is not None and not self.dp.mine(k):
                continue
            idx = rows[start:start + cfg.micro_batch_size]
            weight = loss_units(batch.mask[idx], d, cfg) / max(denoms["policy"], 1)
            pad = cfg.micro_batch_size - len(idx) if len(rows) > len(idx) else 0
            for key, value in self._micro_step(state, idx, denoms, pad).items():
                sums[key] = sums.get(key, 0.0) + value * weight * share
        if self.sharded:
            # Every forward/backward is a collective: a rank short of micro-batches this
            # step (their count is not a multiple of world) runs one at zero weight.
            world = self.dp.world
            if len(starts) % world and self.dp.rank >= len(starts) % world:
                self._micro_step(state, rows[:cfg.micro_batch_size], denoms, scale=0.0)
            self.dp.all_reduce_grads([p for p in sharding.replicated(self.policy)
                                      if p.requires_grad])
        elif self.dp is not None:
            self.dp.all_reduce_grads([p for g in self.optimizer.param_groups
                                      for p in g["params"]])
        if not state.train_actor:
            # Critic warmup: only the value head steps. The value loss's gradient also
            # reaches the trunk it shares with the policy; stepping that would change the
            # policy (from an SFT start, a fresh head's large errors wrecked it).
            for group in self.optimizer.param_groups:
                if group["name"] == "actor":
                    for p in group["params"]:
                        p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded: a DTensor of the shards' norms
            grad_norm = grad_norm.full_tensor()
        state.first_step = False
        if not torch.isfinite(grad_norm):  # a non-finite loss or gradient: never applied
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps_skipped += 1
            log.warning("update %d: a non-finite loss or gradient norm; that optimizer step "
                        "is skipped (%d so far)", self.version, self.nonfinite_steps_skipped)
            return
        self.optimizer.step()
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) * share

    def _with_ppo_advantages(self, batch: TrainBatch) -> tuple[TrainBatch, torch.Tensor,
                                                                dict]:
        """GAE advantages and returns from the behaviour values, each truncated episode
        bootstrapped from the current value of the state it stopped in: (the batch with
        its advantages, the returns, rollout metrics)."""
        t = batch.targets
        bootstrap = torch.zeros(0)
        if t.final_obs is not None:
            with torch.no_grad():
                inputs = self.policy.prepare(t.final_obs, self.device)
                bootstrap = self.policy.act(inputs, True, self.temperature).values.float().cpu()
        valid = batch.mask.sum(-1) > 0
        adv, returns, metrics = ppo_advantages(
            t, bootstrap, valid, self.cfg.ppo.gae_lambda, self.cfg.ppo.normalize_advantages)
        return dataclasses.replace(batch, advantages=adv), returns, metrics

    def _logprobs_no_grad(self, batch: TrainBatch) -> torch.Tensor:
        """The current policy's log-probs of the batch's actions, without gradients."""
        out = torch.zeros_like(batch.old_logprobs)
        with torch.no_grad():
            for start in range(0, len(batch), self.cfg.micro_batch_size):
                idx = torch.arange(start, min(start + self.cfg.micro_batch_size, len(batch)))
                inputs = self.policy.prepare(take(batch.obs, idx.numpy()), self.device)
                out[idx] = self._evaluate(self.policy, inputs, batch.actions[idx]).logprobs \
                    .float().cpu()
        return out

    def _evaluate(self, policy: Policy, inputs: dict, actions: torch.Tensor):
        # bf16 autocast on CUDA for the model; the policies return fp32 log-probs, so the
        # ratio and loss are computed in fp32.
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=self.cfg.bf16 and self.device.type == "cuda"):
            return policy.evaluate(inputs, actions.to(self.device), self.temperature)

    def _micro_step(self, state: UpdateState, idx: torch.Tensor, denoms: dict,
                    pad: int = 0, scale: float = 1.0) -> dict:
        """Forward and backward of the chunks ``idx``; ``pad`` masked-out repeats of its
        first rows keep every micro-batch of a step the same shape (steady allocations).
        Returns this micro-batch's own means, for metrics. ``scale`` 0: a sharded rank's
        filler, whose backward only takes part in the collectives (nothing recorded)."""
        cfg, d, batch = self.cfg, self.policy.action_dim, state.batch
        valid = batch.mask[idx]
        if pad:
            idx = torch.cat([idx, idx[:1].repeat(pad)])
            valid = torch.cat([valid, torch.zeros_like(valid[:1]).repeat(pad, 1)])
        mask = valid.to(self.device)
        # Prepared once: the reference of the KL penalty reads the same inputs.
        inputs = self.policy.prepare(take(batch.obs, idx.numpy()), self.device)
        ev = self._evaluate(self.policy, inputs, batch.actions[idx])
        if state.first_step and scale:
            self._drift(state, idx[:len(idx) - pad], ev.logprobs, valid[:len(idx) - pad])
        prox = None
        if state.prox is not None:
            real = idx[:len(idx) - pad] if pad else idx
            if state.fill_prox and state.epoch == 0:
                state.prox[real] = ev.logprobs[:len(real)].detach().float().cpu()
            prox = state.prox[idx].to(self.device)
        pg_loss, m = ppo_actor_loss(
            ev.logprobs, batch.old_logprobs[idx].to(self.device),
            batch.advantages[idx].to(self.device), mask, cfg.clip_ratio_low,
            cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.ratio_level,
            denominator=denoms["policy"], prox_logprobs=prox,
            behav_weight_cap=cfg.behav_weight_cap, aggregation=cfg.loss_aggregation)
        entropy = masked_mean(ev.entropy, mask.unsqueeze(-1).expand_as(ev.entropy),
                              denoms["entropy"])
        # The step weights what this returns by ``own``, this micro-batch's share of the
        # policy loss's units; a term that is already a share of a global mean (a sum
        # over global counts) is returned divided by it, so that the weighted sum is exact.
        own = max(loss_units(valid, d, cfg), 1) / max(denoms["policy"], 1)
        loss = pg_loss - cfg.entropy_coef * entropy
        out = {"policy_loss": pg_loss.item() / own, "entropy": entropy.item() / own, **m}
        if self.reference is not None:
            kl = self._kl_penalty(inputs, batch.actions[idx], ev.logprobs, mask,
                                  denoms["policy"])
            loss = loss + cfg.kl_beta * kl
            out["kl_ref"] = kl.item() / own
        if state.returns is not None:
            chunks = valid.sum(-1) > 0
            v_loss, vm = value_loss(
                ev.values.float(), batch.targets.values[idx].to(self.device),
                state.returns[idx].to(self.device), chunks.to(self.device), cfg.ppo.value_clip,
                cfg.ppo.huber_delta, denominator=denoms["chunks"])
            loss = loss + cfg.ppo.value_coef * v_loss
            chunk_share = float(chunks.sum()) / max(denoms["chunks"], 1)
            out["value_loss"] = v_loss.item() / own
            out["value_clip_ratio"] = vm["value_clip_ratio"] * chunk_share / own
        (loss * scale).backward()
        out["loss"] = loss.item() / own
        return out if scale else {}

    def _drift(self, state: UpdateState, idx: torch.Tensor, logprobs: torch.Tensor,
               valid: torch.Tensor) -> None:
        """Add this micro-batch's on-policy |log pi_learner - log pi_behaviour| to the
        update's drift: chunks acted by exactly the weights the learner holds before its
        first optimizer step, whose log-probs differ only by how each side computes them
        (a server in bf16, the learner under autocast: precision, not policy change)."""
        rows = (state.batch.versions[idx] == self.version).nonzero().squeeze(-1)
        if not len(rows):
            return
        diff = (logprobs[:len(idx)].detach().float().cpu()[rows]
                - state.batch.old_logprobs[idx[rows]]).abs()
        elements = valid[rows].bool().unsqueeze(-1).expand_as(diff)
        state.drift_sum += float(diff[elements].sum())
        state.drift_count += int(elements.sum())

    def _kl_penalty(self, inputs: dict, actions: torch.Tensor, logprobs: torch.Tensor,
                    mask: torch.Tensor, denominator: float) -> torch.Tensor:
        """KL(pi || pi_ref) at the ratio level, aggregated like the policy loss."""
        with torch.no_grad():
            ref = self._evaluate(self.reference, inputs, actions).logprobs.float()
        new, elem_mask = ratio_level_view(logprobs, mask, self.cfg.ratio_level)
        old, _ = ratio_level_view(ref, mask, self.cfg.ratio_level)
        return aggregate(kl_to_reference(new, old), elem_mask, self.cfg.loss_aggregation,
                         denominator)

    def _metrics(self, state: UpdateState, sums: dict, rollout: dict, lrs: dict) -> dict:
        batch, cfg = state.batch, self.cfg
        adv = batch.advantages
        metrics = {
            "train/actor/policy_loss": sums["policy_loss"],
            "train/actor/approx_kl": sums["approx_kl"],
            "train/actor/clip_fraction": sums["clip_fraction"],
            "train/actor/clipped_ratio": sums["clipped_ratio"],
            "train/actor/dual_clip_fraction": sums["dual_clip_fraction"],
            # Over the optimizer steps applied (none: NaN, every step was skipped).
            "train/actor/grad_norm": sums.get("grad_norm", float("nan")),
            "train/actor/lr": lrs["actor"],
            "train/entropy_loss": sums["entropy"],
            "train/loss": sums["loss"],
            "rollout/advantages_max": float(adv.max()),
            "rollout/advantages_mean": float(adv.mean()),
            "rollout/advantages_min": float(adv.min()),
            "rollout/policy_lag": float((self.version - 1 - batch.versions).float().mean()),
            "learner/nonfinite_updates_skipped": float(self.nonfinite_steps_skipped),
            **rollout,
        }
        if state.drift_count:  # on-policy chunks in the first mini-batch
            metrics["train/actor/logprob_drift"] = state.drift_sum / state.drift_count
        if cfg.decoupled:
            metrics["train/actor/behav_weight_mean"] = sums["behav_weight_mean"]
            metrics["train/actor/behav_weight_truncated"] = sums["behav_weight_truncated"]
        if self.reference is not None:
            metrics["train/actor/kl_ref"] = sums["kl_ref"]
        if state.returns is not None:
            metrics["train/critic/value_loss"] = sums["value_loss"]
            metrics["train/critic/value_clip_ratio"] = sums["value_clip_ratio"]
            metrics["train/critic/lr"] = lrs.get("critic", lrs["actor"])
        return metrics
