"""The learner's PPO path on real episodes of the synthetic task: final observations
for the bootstrap, the value loss and critic metrics, the critic's own learning rate
and warmup, the KL penalty, mini-batches, schedules."""

import dataclasses

import numpy as np
import pytest
import torch

from actors.executor import StageExecutor

from protocol.ids import IdSource
from configs import load_config
from envs import make_env
from learner.batch import build_batch
from learner.core import Learner
from models import build_policy
from tests.conftest import ROOT, small_overrides


def _episodes(cfg, policy, n=8):
    """``n`` finished episodes (groups of 1) acted by ``policy``, with values and the
    final observation of truncated ones."""
    env = make_env(cfg.env, n, 1, cfg.model.action_dim)
    seeds = iter(range(1000))
    stage = StageExecutor(env, list(range(n)), cfg.actions_per_chunk, IdSource(0),
                          lambda group: next(seeds), record_final_obs=True)
    done = []
    while len(done) < n:
        obs = stage.observe()
        out = policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
        done += stage.execute(out.actions.numpy(), out.logprobs.numpy(),
                              out.values.numpy(), 0)
    return [[ep] for ep in done[:n]]


@pytest.fixture
def ppo(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_ppo.yaml", small_overrides(
        tmp_path, **{"learner.micro_batch_size": 5, "actor.group_size": 1,
                     "env.max_episode_steps": 16, "learner.lr": 1e-2}))
    torch.manual_seed(0)
    return cfg, build_policy(cfg.model)


def _batch(cfg, groups):
    return build_batch(groups, "ppo", cfg.learner.ppo.gamma, cfg.learner.ppo.reward_level)


def test_truncated_episodes_carry_their_final_observation(ppo):
    cfg, policy = ppo
    eps = [g[0] for g in _episodes(cfg, policy)]
    truncated = [ep for ep in eps if ep.truncated]
    assert truncated, "the random policy should run out of steps in some episodes"
    for ep in eps:
        assert (ep.final_main_image is not None) == ep.truncated
        assert np.allclose(ep.action_rewards.sum(1), ep.rewards, atol=1e-5)
        assert (ep.action_rewards[np.arange(ep.action_rewards.shape[1]) >=
                                  ep.executed[:, None]] == 0).all()
    batch = _batch(cfg, [[ep] for ep in eps])
    t = batch.targets
    assert len(t.final_rows) == len(truncated) == len(t.final_obs.states)
    assert t.episode_end.sum() == len(eps) and t.terminal.sum() == len(eps) - len(truncated)
    assert t.episode_end[t.final_rows].all() and not t.terminal[t.final_rows].any()


def test_ppo_step_fits_the_value_and_reports_critic_metrics(ppo):
    cfg, policy = ppo
    batch = _batch(cfg, _episodes(cfg, policy))
    learner = Learner(policy, cfg.learner, 1.0, torch.device("cpu"))
    first = learner.step(batch)
    for key in ("train/critic/value_loss", "train/critic/value_clip_ratio",
                "train/critic/explained_variance", "rollout/returns_mean"):
        assert np.isfinite(first[key]), key
    assert first["rollout/advantages_mean"] == pytest.approx(0.0, abs=1e-5)  # normalised
    assert first["rollout/truncated_bootstraps"] == len(batch.targets.final_rows)
    # Reusing one batch: without the bootstraps (which follow the value head) its targets
    # stay fixed, and the critic alone fits them.
    fixed = dataclasses.replace(batch, targets=dataclasses.replace(
        batch.targets, final_obs=None, final_rows=torch.zeros(0, dtype=torch.long)))
    L = dataclasses.replace(cfg.learner, ppo=dataclasses.replace(
        cfg.learner.ppo, critic_warmup_updates=100, value_clip=0.05))
    learner = Learner(policy, L, 1.0, torch.device("cpu"))
    losses = [learner.step(fixed)["train/critic/value_loss"] for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    assert learner.step(fixed)["train/critic/value_clip_ratio"] > 0  # moved past the clip


def test_critic_lr_and_warmup_train_only_the_value_at_first(ppo):
    cfg, policy = ppo
    L = dataclasses.replace(cfg.learner, ppo=dataclasses.replace(
        cfg.learner.ppo, critic_lr=5e-2, critic_warmup_updates=1, critic_lr_warmup_steps=2))
    learner = Learner(policy, L, 1.0, torch.device("cpu"))
    groups = {g["name"]: g for g in learner.optimizer.param_groups}
    assert groups["critic"]["lr"] == pytest.approx(5e-2 / 2)   # its warmup: step 1 of 2
    assert groups["actor"]["lr"] == pytest.approx(L.lr)
    batch = _batch(cfg, _episodes(cfg, policy))
    log_std, head = policy.log_std.detach().clone(), policy.value_head.weight.detach().clone()
    inputs = policy.prepare(batch.obs, torch.device("cpu"))
    with torch.no_grad():
        before = policy.evaluate(inputs, batch.actions, 1.0).logprobs
    m = learner.step(batch)
    assert torch.equal(policy.log_std, log_std)  # the actor-only parameter did not move
    with torch.no_grad():  # nor did the trunk the value head shares: the policy is the same
        assert torch.equal(policy.evaluate(inputs, batch.actions, 1.0).logprobs, before)
    assert not torch.equal(policy.value_head.weight, head)
    assert m["train/critic/lr"] == pytest.approx(5e-2 / 2)
    learner.step(batch)
    assert not torch.equal(policy.log_std, log_std)  # after the warmup the actor trains
    assert groups["critic"]["lr"] == pytest.approx(5e-2)


def test_kl_penalty_to_the_frozen_start(ppo):
    cfg, policy = ppo
    learner = Learner(policy, dataclasses.replace(cfg.learner, kl_beta=0.1), 1.0,
                      torch.device("cpu"))
    batch = _batch(cfg, _episodes(cfg, policy))
    assert learner.step(batch)["train/actor/kl_ref"] == pytest.approx(0.0, abs=1e-6)
    for _ in range(3):
        m = learner.step(batch)
    assert m["train/actor/kl_ref"] > 1e-5
    ref = dict(learner.reference.named_parameters())
    assert all(not p.requires_grad for p in ref.values())
    assert not torch.equal(ref["log_std"], policy.log_std)


def test_mini_batches_step_the_optimizer_each_and_decoupled_prox_is_the_start(ppo):
    cfg, policy = ppo
    batch = _batch(cfg, _episodes(cfg, policy))
    L = dataclasses.replace(cfg.learner, global_batch_size=len(batch) // 2 + 1,
                            update_epochs=2, decoupled=True)
    learner = Learner(policy, L, 1.0, torch.device("cpu"))
    with torch.no_grad():  # the behaviour is now stale w.r.t. the learner
        policy.log_std.add_(0.3)
        start = policy.evaluate(policy.prepare(batch.obs, torch.device("cpu")),
                                batch.actions, 1.0).logprobs
    steps, proximal = [], []
    step, no_grad = learner.optimizer.step, learner._logprobs_no_grad
    learner.optimizer.step = lambda: (steps.append(1), step())
    learner._logprobs_no_grad = lambda b: proximal.append(no_grad(b)) or proximal[-1]
    m = learner.step(batch)
    assert len(steps) == 2 * 2  # two mini-batches, two epochs
    assert len(proximal) == 1 and torch.allclose(proximal[0], start, atol=1e-5)
    assert m["train/actor/behav_weight_mean"] != pytest.approx(1.0)


def test_cosine_schedule_steps_per_update(ppo):
    cfg, policy = ppo
    L = dataclasses.replace(cfg.learner, lr_schedule="cosine", lr_warmup_steps=1,
                            lr_decay_steps=2, min_lr_ratio=0.0)
    learner = Learner(policy, L, 1.0, torch.device("cpu"))
    batch = _batch(cfg, _episodes(cfg, policy, n=2))
    lrs = [learner.step(batch)["train/actor/lr"] for _ in range(4)]
    assert lrs == pytest.approx([L.lr, L.lr, L.lr * 0.5, 0.0], abs=1e-9)
