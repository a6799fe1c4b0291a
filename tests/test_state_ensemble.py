"""A state ensemble (worldmodel/ensemble.py, world_model.state.ensemble): each member
unrolls its own state, success only where every member predicts it, the members' mean
shown; trained on bootstraps by run.mode=train_world_model, saved in world_model.pt, and
judging the world-model env."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from tests.test_state_judge import _model, _run, _starts, small_state_run
from worldmodel import train as wm_train
from worldmodel.ensemble import StateEnsemble, as_ensemble, outcomes, shown_rollout
from worldmodel.models import WorldModel
from worldmodel.state_model import StateEpisode, StateModel


def _pusher(gain: float, proprio_scale: float = 0.0) -> StateModel:
    """A 2-D state model whose weights are set by hand (normalisers: identity):
    s' = s + gain SiLU(a[0]) e_0; success logit 40 SiLU(SiLU(s[0])) - 20 (the judge's two
    hidden layers); with ``proprio_scale`` c a head reading q = c SiLU(SiLU(s[0]))."""
    m = StateModel(2, 7, hidden=8, layers=1, proprio_dim=1 if proprio_scale else 0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.dynamics[0].weight[0, 2] = 1.0  # input: [s0, s1, a0..a6]
        m.dynamics[-1].weight[0, 0] = 1.0
        m.d_std.fill_(gain)
        heads = [(m.judge, 40.0, -20.0)]
        if proprio_scale:
            heads.append((m.proprio_head, proprio_scale, 0.0))
        for head, scale, bias in heads:
            head[0].weight[0, 0] = head[2].weight[0, 0] = 1.0
            head[-1].weight[0, 0] = scale
            head[-1].bias.fill_(bias)
    return m


def _silu(x: float) -> float:
    return x / (1.0 + np.exp(-x))


def _logit(s0: float) -> float:
    return 40 * _silu(_silu(s0)) - 20


@torch.no_grad()  # predictions only, as the env makes them
def test_members_unroll_apart_and_the_lowest_judges():
    fast, slow = _pusher(1.0), _pusher(0.25)
    ens = StateEnsemble([fast, slow])
    first = torch.zeros(1, 2)
    actions = torch.zeros(1, 3, 7)
    actions[..., 0] = 1.0
    states = ens.rollout(ens.start(first), actions)
    assert states.shape == (1, 3, 2, 2)
    step = _silu(1.0)  # the first layer's SiLU of the action entry
    np.testing.assert_allclose(states[0, :, 0, 0], [step, 2 * step, 3 * step], rtol=1e-6)
    np.testing.assert_allclose(states[0, :, 1, 0], [step / 4, step / 2, 3 * step / 4],
                               rtol=1e-6)
    # the logit is each member's on its own state; the ensemble's the lower
    own = [_logit(float(s)) for s in states[0, -1, :, 0]]
    assert own[0] > 0 > own[1]
    np.testing.assert_allclose(float(ens.success_logits(states)[0, -1]), min(own), rtol=1e-5)
    np.testing.assert_allclose(ens.mean(states)[0, -1], states[0, -1].mean(0), rtol=1e-6)
    np.testing.assert_allclose(shown_rollout(ens, first, actions), ens.mean(states))
    # one member: itself, its weights shared
    alone = as_ensemble(fast)
    assert as_ensemble(ens) is ens and alone.members[0] is fast
    np.testing.assert_allclose(shown_rollout(fast, first, actions)[0],
                               fast.rollout(first, actions)[0])


@torch.no_grad()  # predictions only, as the env makes them
def test_proprioception_is_the_members_mean_reading():
    ens = StateEnsemble([_pusher(1.0, proprio_scale=2.0), _pusher(1.0, proprio_scale=4.0)])
    states = torch.tensor([[[0.3, 0.0], [0.7, 0.0]]])  # [B=1, K=2, S=2]
    expected = (2.0 * _silu(_silu(0.3)) + 4.0 * _silu(_silu(0.7))) / 2
    np.testing.assert_allclose(float(ens.proprio(states)[0, 0]), expected, rtol=1e-5)


def test_members_of_other_sizes_are_refused():
    with pytest.raises(ValueError, match="must share"):
        StateEnsemble([StateModel(2, 7), StateModel(3, 7)])


def test_open_loop_outcomes_take_the_lowest_member():
    actions = np.zeros((8, 7), np.float32)
    actions[:, 0] = 1.0
    ep = StateEpisode(np.zeros((8, 2), np.float32), actions, np.arange(8) >= 3)
    fast, slow = _pusher(0.5), _pusher(0.02)
    best_fast, real = outcomes(fast, [ep])
    best_both, _ = outcomes(StateEnsemble([fast, slow]), [ep])
    assert real[0] and best_fast[0] > 0.99 and best_both[0] < 0.01


def test_open_loop_outcomes_judge_the_last_actions_state_too():
    """A replayed world-model episode ends at the action its model called a success: the
    state that action leads to (never recorded) is judged, and its success counts."""
    actions = np.zeros((8, 7), np.float32)
    actions[:, 0] = 1.0
    ep = StateEpisode(np.zeros((8, 2), np.float32), actions, np.arange(8) >= 7)
    best, real = outcomes(_pusher(0.2), [ep])  # below 0.7 until the 8th state: 0.995
    assert real[0] and best[0] > 0.99


def test_the_env_pays_only_a_success_every_member_predicts():
    both = WorldModelVectorEnv(2, 2, _model(-10.0, StateEnsemble([_pusher(0.2), _pusher(0.2)])),
                               _starts(), 12, judge="state")
    alone = _run(both, 1.0)
    assert alone[0] is not None and alone[0] == alone[1]
    split = WorldModelVectorEnv(2, 2, _model(-10.0, StateEnsemble([_pusher(0.2),
                                                                   _pusher(0.02)])),
                                _starts(), 12, judge="state")
    assert _run(split, 1.0) == [None, None]  # the slow member never gets there
    assert split.sim.shape == (2, 2, 2)  # [envs, members, state]
    np.testing.assert_allclose(split.sim[:, 0, 0] / split.sim[:, 1, 0], 10.0, rtol=1e-5)


@torch.no_grad()  # predictions only, as the env makes them
def test_an_ensemble_travels_in_world_model_pt(tmp_path):
    ens = StateEnsemble([_pusher(1.0), _pusher(0.25)])
    back = WorldModel.load(_model(0.0, ens).save(tmp_path / "wm.pt")).state_model
    assert isinstance(back, StateEnsemble) and back.spec() == ens.spec()
    first, actions = torch.zeros(1, 2), torch.ones(1, 4, 7)
    np.testing.assert_array_equal(shown_rollout(back, first, actions),
                                  shown_rollout(ens, first, actions))


def test_train_world_model_trains_each_member_on_its_own_bootstrap(tmp_path):
    out = tmp_path / "wm"
    base = small_state_run(tmp_path, out) + ["env.world_model.judge=state",
                                             "world_model.state.ensemble=3"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", base)
    assert wm_train.run(cfg) == 0
    summary = json.loads((out / "world_model_summary.json").read_text())
    assert summary["steps"]["state"] == 40 and 0 <= summary["state_model_auc"] <= 1
    alone = summary["state_model_members"]
    assert len(alone) == 3 and all(0 <= m["auc"] <= 1 for m in alone)
    # the ensemble calls a success only where every member does
    assert summary["state_model_success_on_real_failures"] <= \
        min(m["success_on_real_failures"] for m in alone)
    model = WorldModel.load(out / "world_model.pt")
    members = model.state_model.members
    assert len(members) == 3
    # own initial weights and own data: own normalisers and own weights
    means = [m.s_mean.numpy() for m in members]
    assert not np.allclose(means[0], means[1]) and not np.allclose(means[1], means[2])
    assert not torch.equal(members[0].dynamics[0].weight, members[1].dynamics[0].weight)
    env = make_world_model_env(cfg.env, 2, 2, 7, 12, "cpu")
    env.reset_group(0, 3)
    assert env.sim.shape == (2, 3, 5)
    for k in range(3):
        np.testing.assert_array_equal(env.sim[0, k].numpy(), env.starts[3].sim_state)
    results = env.step_chunk(np.arange(2), np.ones((2, 8, 7), np.float32))
    assert len(results) == 8
    assert not torch.allclose(env.sim[0, 0], env.sim[0, 1])  # the members part ways


def test_a_state_only_world_model_trains_no_frame_parts(tmp_path):
    """world_model.steps=0 and success_steps=0 without init: allowed with a state model
    (a world model the simulator draws), and no frame metric is computed for them."""
    out = tmp_path / "wm"
    base = small_state_run(tmp_path, out) + ["world_model.steps=0", "world_model.success_steps=0",
                                             "env.world_model.judge=state"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", base)
    assert wm_train.run(cfg) == 0
    summary = json.loads((out / "world_model_summary.json").read_text())
    assert "val_psnr_changed" not in summary and "state_model_auc" in summary
    assert summary["steps"]["generator"] == summary["steps"]["success"] == 0
    assert summary["steps"]["state"] == 40
    frames = load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                         [*base, "env.world_model.judge=frames"])
    for env in (frames.env, cfg.env):  # the frame predictor's frames, or its judge
        with pytest.raises(ValueError, match="left untrained"):
            make_world_model_env(env, 2, 2, 7, 12, "cpu")
    without = [*base, "world_model.state.steps=0"]  # nothing at all to train
    with pytest.raises(ConfigError, match="state.steps"):
        load_config(ROOT / "configs/robosuite_lift_world_model.yaml", without)
