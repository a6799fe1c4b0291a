"""The learner core on real episodes from the real env and policy."""

import dataclasses

import numpy as np
import pytest
import torch

from actors.executor import StageExecutor
from configs import load_config
from envs import make_env
from learner.batch import build_batch, group_lag, group_verdict, informative_groups
from learner.core import Learner
from models import build_policy
from protocol.ids import IdSource
from tests.conftest import ROOT, small_overrides
from tests.messages_factory import trajectory


def _collect(cfg, policy, groups=2, version=0):
    env = make_env(cfg.env, groups * cfg.actor.group_size, cfg.actor.group_size,
                   cfg.model.action_dim)
    seeds = iter(range(1000))
    stage = StageExecutor(env, list(range(groups)), cfg.actions_per_chunk, IdSource(0),
                          lambda group: next(seeds))
    done: dict = {}
    while len(done) < groups or any(len(g) < cfg.actor.group_size for g in done.values()):
        obs = stage.observe()
        with torch.no_grad():  # as a server acts
            out = policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
        for ep in stage.execute(out.actions.numpy(), out.logprobs.numpy(), None, version):
            done.setdefault(ep.group_id, []).append(ep)
    return list(done.values())[:groups]


@pytest.fixture
def setup(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **{"learner.micro_batch_size": 7}))
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    return cfg, policy, Learner(policy, cfg.learner, 1.0, torch.device("cpu"))


def test_recomputed_logprobs_equal_the_behaviour_logprobs(setup):
    cfg, policy, _ = setup
    batch = build_batch(_collect(cfg, policy))
    ev = policy.evaluate(policy.prepare(batch.obs, torch.device("cpu")), batch.actions, 1.0)
    assert torch.allclose(ev.logprobs, batch.old_logprobs, atol=1e-5)


def test_step_updates_weights_and_reports_metrics(setup):
    cfg, policy, learner = setup
    groups = _collect(cfg, policy)
    batch = build_batch(groups)
    assert len(batch) == sum(len(ep.actions) for g in groups for ep in g)
    assert batch.mask.sum() == sum(int(ep.executed.sum()) for g in groups for ep in g)
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = learner.step(batch)
    assert learner.version == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    # first epoch at the behaviour weights: ratios are exactly 1
    assert metrics["train/actor/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["train/actor/clip_fraction"] == 0.0
    for key in ("train/actor/policy_loss", "train/actor/grad_norm", "train/entropy_loss",
                "train/loss", "rollout/advantages_max", "rollout/advantages_min"):
        assert np.isfinite(metrics[key]), key


def test_a_step_raises_the_logprob_of_better_episodes(setup):
    cfg, policy, learner = setup
    groups = [g for g in _collect(cfg, policy, groups=4) if informative_groups([g])]
    assert groups, "no group with different returns; change seeds"
    batch = build_batch(groups)

    def weighted_logprob():
        with torch.no_grad():
            ev = policy.evaluate(policy.prepare(batch.obs, torch.device("cpu")),
                                 batch.actions, 1.0)
        lp = (ev.logprobs.sum(-1) * batch.mask).sum(-1)
        return float((lp * batch.advantages).sum())

    before = weighted_logprob()
    learner.step(batch)
    assert weighted_logprob() > before


def test_group_lag_and_informative_groups(setup):
    cfg, policy, _ = setup
    groups = _collect(cfg, policy, version=3)
    assert group_lag(groups[0], 7) == 4
    same = [groups[0][0]] * len(groups[0])
    assert informative_groups([same]) == []


def test_padded_micro_batches_give_the_full_batch_gradient(tmp_path):
    import copy
    import dataclasses

    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(tmp_path))
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    batch = build_batch(_collect(cfg, policy, groups=4))
    grads = []
    for micro in (7, len(batch)):  # 7: padded tail micro-batch; len: one micro-batch
        model = copy.deepcopy(policy)
        learner = Learner(model, dataclasses.replace(cfg.learner, micro_batch_size=micro,
                                                     max_grad_norm=1e9), 1.0,
                          torch.device("cpu"))
        learner.optimizer.step = lambda: None  # keep the gradients, skip the update
        learner.step(batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_groups_with_a_simulator_error_are_not_trained_on(setup, tmp_path):
    import dataclasses
    import queue
    import threading
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    from learner.stalls import StallReport
    from learner.worker import Books, _train

    cfg, policy, learner = setup
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, total_updates=1))
    good, broken = _collect(cfg, policy, groups=2)[:2]
    broken = [dataclasses.replace(broken[0], env_error="MuJoCo instability at step 3")] + \
        broken[1:]
    ready: queue.Queue = queue.Queue()
    for group in (broken, good, good):  # groups_per_update=2: trains once, on good groups
        ready.put(group)
    sent = []
    weights = SimpleNamespace(send=lambda version, policy: sent.append(version))
    writer = SummaryWriter(str(tmp_path / "tb"))
    links = SimpleNamespace(ready=ready, weights=weights, check=lambda: None,
                            admit=lambda version, policy: None)
    books = Books()
    _train(cfg, learner, links, books, writer, threading.Event(),
           StallReport(tmp_path / "stalls.txt", 0))
    writer.close()
    assert learner.version == 1 and sent == [1] and ready.empty()
    # The test feeds the good group twice: the books notice.
    assert len(books.trained) == len(good) and books.trained_twice == len(good)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Scalars("learner/sim_error_groups_dropped")[0].value == 1


def test_decoupled_step_corrects_a_stale_batch(tmp_path):
    """Episodes acted by older weights: the decoupled loss clips against the learner's
    weights at the update's start and weights by pi_prox / pi_behav (counted when
    truncated); on fresh data the weights are exactly 1."""
    import dataclasses

    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **{"learner.decoupled": True, "learner.behav_weight_cap": 1.2,
                     "learner.update_epochs": 2}))
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    learner = Learner(policy, cfg.learner, 1.0, torch.device("cpu"))
    fresh = build_batch(_collect(cfg, policy))
    m = learner.step(fresh)  # epoch 1 at the behaviour's own weights
    assert m["train/actor/behav_weight_truncated"] == 0.0
    # Now the learner's weights differ from those that acted `fresh`: it is stale.
    with torch.no_grad():
        policy.log_std.add_(0.5)
    m = learner.step(fresh)
    assert m["train/actor/behav_weight_truncated"] > 0.0
    assert m["train/actor/behav_weight_mean"] != pytest.approx(1.0)
    # Loss aggregation modes run through the same step.
    for mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        other = Learner(policy, dataclasses.replace(cfg.learner, loss_aggregation=mode),
                        1.0, torch.device("cpu"))
        assert np.isfinite(other.step(fresh)["train/actor/policy_loss"])


def test_group_mean_bounds_drop_all_fail_and_all_success_groups(setup, tmp_path):
    import dataclasses

    from configs import ConfigError
    from learner.batch import within_mean_bounds

    cfg, policy, _ = setup
    group = _collect(cfg, policy, groups=1)[0]
    scored = lambda xs: [dataclasses.replace(ep, episode_return=x)  # noqa: E731
                         for ep, x in zip(group, xs)]
    bounds = [0.1, 0.9]
    assert not within_mean_bounds(scored([0, 0, 0, 0]), bounds)  # all fail
    assert not within_mean_bounds(scored([1, 1, 1, 1]), bounds)  # all succeed
    assert within_mean_bounds(scored([1, 0, 0, 0]), bounds)      # mean .25
    assert within_mean_bounds(scored([1, 1, 1, 1]), [])          # off
    with pytest.raises(ConfigError, match="group_mean_bounds"):
        load_config(ROOT / "configs/synthetic_grpo.yaml",
                    small_overrides(tmp_path, **{"learner.grpo.group_mean_bounds": "[0.9,0.1]"}))


@pytest.mark.parametrize("coef", [0.0, 0.05])
def test_the_entropy_bonus_raises_the_entropy_and_nothing_else_moves_it(tmp_path, coef):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **{"learner.entropy_coef": coef, "learner.lr": 0.01}))
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    learner = Learner(policy, cfg.learner, 1.0, torch.device("cpu"))
    batch = build_batch(_collect(cfg, policy))
    batch = dataclasses.replace(batch, advantages=torch.zeros_like(batch.advantages))
    before = policy.log_std.detach().clone()
    metrics = learner.step(batch)  # zero advantages: the policy loss has no gradient
    change = (policy.log_std.detach() - before).mean().item()
    if coef:
        assert change > 0 and metrics["train/entropy_loss"] > 0
    else:
        assert change == 0


def _group(returns, version=10, error=""):
    return [dataclasses.replace(trajectory(), episode_return=float(r), env_error=error if not k
                                else "", policy_versions=np.full(4, version, np.int64))
            for k, r in enumerate(returns)]


@pytest.mark.parametrize("returns,acted,error,overrides,verdict", [
    ([1, 0, 0, 1], 10, "", {}, ""),
    ([1, 0, 0, 1], 10, "mujoco: unstable", {}, "sim_failed"),
    ([1, 0, 0, 1], 5, "sim error", {}, "sim_failed"),        # the first reason wins
    ([1, 0, 0, 1], 5, "", {"learner.max_staleness": 4}, "stale"),
    ([1, 0, 0, 1], 6, "", {"learner.max_staleness": 4}, ""),  # 4 behind: still fresh
    ([1, 1, 1, 1], 10, "", {"learner.grpo.filter_equal_groups": True}, "filtered"),
    ([1, 1, 1, 1], 10, "", {"learner.grpo.filter_equal_groups": False}, ""),
    ([1, 1, 1, 1], 10, "", {"learner.grpo.filter_equal_groups": True, "learner.algorithm": "ppo",
                            "model.value_head": True}, ""),
    ([1, 0, 0, 0], 10, "", {"learner.grpo.group_mean_bounds": [0.3, 0.9]}, "out_of_bounds"),
    ([1, 1, 0, 0], 10, "", {"learner.grpo.group_mean_bounds": [0.3, 0.9]}, ""),
])
def test_group_verdict_says_why_a_group_is_not_trained_on(tmp_path, returns, acted, error,
                                                          overrides, verdict):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml",
                      small_overrides(tmp_path, **overrides))
    assert group_verdict(_group(returns, acted, error), 10, cfg.learner) == verdict


def test_logprob_drift_is_the_on_policy_gap_between_server_and_learner(setup):
    """``train/actor/logprob_drift``: mean |log pi_learner - log pi_behaviour| per valid
    action element, over chunks acted by the weights the learner holds (version 0 here)."""
    cfg, policy, learner = setup
    batch = build_batch(_collect(cfg, policy))
    assert learner.step(batch)["train/actor/logprob_drift"] < 1e-5  # fp32 at both ends

    def fresh():  # the fixture's starting weights, at version 0
        torch.manual_seed(0)
        return Learner(build_policy(cfg.model), cfg.learner, 1.0, torch.device("cpu"))

    # A server whose log-probs are off by 0.05 either way (as bf16 would be):
    signs = torch.where(torch.rand(batch.old_logprobs.shape) < 0.5, -1.0, 1.0)
    served = dataclasses.replace(batch, old_logprobs=batch.old_logprobs + 0.05 * signs)
    assert fresh().step(served)["train/actor/logprob_drift"] == pytest.approx(0.05, abs=1e-4)
    # Chunks acted by older weights are not drift: no on-policy chunk, no metric.
    later = fresh()
    later.version = 2
    assert "train/actor/logprob_drift" not in later.step(served)


def test_a_non_finite_loss_never_reaches_the_weights(setup):
    cfg, policy, learner = setup
    batch = build_batch(_collect(cfg, policy))
    before = [p.detach().clone() for p in policy.parameters()]
    poisoned = dataclasses.replace(batch, advantages=torch.full_like(batch.advantages, np.nan))
    metrics = learner.step(poisoned)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    steps = -(-len(batch) // min(cfg.learner.global_batch_size or len(batch), len(batch)))
    skipped = cfg.learner.update_epochs * steps  # every optimizer step of that update
    assert metrics["learner/nonfinite_updates_skipped"] == skipped
    metrics = learner.step(batch)  # training goes on
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert metrics["learner/nonfinite_updates_skipped"] == skipped
