"""Branched resets of the world-model env (env.world_model.branch: data, share):
training episodes that start from states recorded episodes really reached, before their
success, the step count going on from there; evaluation trials never branch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from demos import read_demos
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from tests.test_state_judge import SIZE, _recording
from worldmodel.data import ResetFrame, branch_frames, reset_frames
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel
from worldmodel.state_model import StateModel

CONFIG = ROOT / "configs/robosuite_lift_world_model.yaml"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Four push recordings with 5-D simulator states: seeds 1 and 3 succeed, 0 and 2 not."""
    folder = tmp_path_factory.mktemp("rec")
    for seed in range(4):
        _recording(seed, folder)
    return folder


def _world_model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(ConvFramePredictor(2, 4, 7, channels=4), SuccessCNN(4), -np.ones(7),
                      np.ones(7), SIZE, state_model=StateModel(5, 7, hidden=16, layers=2)).eval()


def test_branch_points_are_every_kth_step_before_the_first_success(recordings):
    demos, _ = read_demos([recordings])
    got = branch_frames([recordings], SIZE, every=3)
    for d in demos:
        mine = [b for b in got if b.init_state_id == d.init_state_id]
        # below the step whose action first succeeded (every step when none did)
        end = int(np.flatnonzero(d.success)[0]) if d.success.any() else len(d)
        assert [b.step for b in mine] == list(range(3, end, 3))
        for b in mine:
            state = d.extras["states"][b.step].astype(np.float32)
            np.testing.assert_array_equal(b.sim_state, state)
            np.testing.assert_array_equal(b.frame, d.main_images[b.step])
            assert b.instruction == d.instruction
    succeeded = [d for d in demos if d.success.any()]
    assert succeeded and len(succeeded) < len(demos)  # both kinds were there to check


def test_branch_points_from_successes_only_and_before_the_success(recordings):
    demos, _ = read_demos([recordings])
    succeeded = {d.init_state_id: int(np.flatnonzero(d.success)[0])
                 for d in demos if d.success.any()}
    got = branch_frames([recordings], SIZE, every=1, successes_only=True, before_success=3)
    assert {b.init_state_id for b in got} == set(succeeded)  # the failed episodes give none
    for state_id, success in succeeded.items():
        assert [b.step for b in got if b.init_state_id == state_id] == \
            list(range(1, success - 3))  # more than 3 steps below the success step


def test_training_resets_branch_with_the_share_and_evaluation_trials_never(recordings):
    starts = [ResetFrame(np.zeros((SIZE, SIZE, 3), np.uint8), "push right", 0,
                         np.zeros(5, np.float32))]
    branches = branch_frames([recordings], SIZE, every=2)
    env = WorldModelVectorEnv(2, 2, _world_model(), starts, 12, judge="state",
                              branches=branches, branch_share=0.5)
    assert all(env.start(i) is starts[0] for i in range(100))  # evaluation trials
    training = [env.start(i) for i in range(100, 1000)]
    share = np.mean([s is not starts[0] for s in training])
    assert 0.43 < share < 0.57
    assert len({s.step for s in training if s is not starts[0]}) > 2  # many points, not one
    assert all(env.start(i) is training[i - 100] for i in range(100, 200))  # fixed by the id
    always = WorldModelVectorEnv(2, 2, _world_model(), starts, 12, judge="state",
                                 branches=branches, branch_share=1.0)
    assert all(always.start(i) is not starts[0] for i in range(100, 200))
    # a branched episode starts from the point's state and ends at the same step count
    i = next(i for i in range(100, 1000) if env.start(i).step == 4)
    env.reset_group(0, i)
    np.testing.assert_array_equal(env.sim[:, 0].numpy(), np.stack([env.start(i).sim_state] * 2))
    results = [env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
               for _ in range(2)]
    assert not results[0][-1].truncated.any() and results[1][-1].truncated.all()  # 4+8 = 12


def test_branching_needs_branch_points():
    starts = [ResetFrame(np.zeros((SIZE, SIZE, 3), np.uint8), "push", 0, np.zeros(5, np.float32))]
    with pytest.raises(ValueError, match="holds no branch point"):
        WorldModelVectorEnv(2, 2, _world_model(), starts, 12, judge="state", branch_share=0.5)
    with pytest.raises(ConfigError, match="share > 0 needs data"):
        load_config(CONFIG, ["env.world_model.branch.share=0.5"])
    # the world model's training takes the chain's overrides too, and builds no env
    assert load_config(CONFIG, ["env.world_model.branch.share=0.5", "run.mode=train_world_model",
                                "world_model.datasets=[x]"]).env.world_model.branch.share == 0.5


def test_the_config_branches_from_the_recordings_below_the_step_limit(recordings, tmp_path):
    checkpoint = _world_model().save(tmp_path / "wm.pt")
    overrides = [
        f"env.image_size={SIZE}", f"env.world_model.checkpoint={checkpoint}",
        f"env.world_model.reset_data=[{recordings}]", f"env.world_model.branch.data=[{recordings}]",
        "env.world_model.branch.share=0.25", "env.world_model.branch.every=4",
        "env.world_model.frames=generator"]
    cfg = load_config(CONFIG, overrides)
    env = make_world_model_env(cfg.env, 2, 2, 7, 8, "cpu")
    assert env.branch_share == 0.25 and {b.step for b in env.branches} == {4}  # 8: the limit
    assert len(env.starts) == 4
    assert {b.init_state_id for b in env.branches} == {0, 1, 2, 3}
    only = make_world_model_env(load_config(CONFIG, [
        *overrides, "env.world_model.branch.successes_only=true"]).env, 2, 2, 7, 8, "cpu")
    assert {b.init_state_id for b in only.branches} == {1, 3}  # the two that succeeded


def test_recordings_without_simulator_states_are_refused_by_name(recordings, tmp_path):
    stateless = tmp_path / "stateless.hdf5"
    stateless.write_bytes((recordings / "state_1.hdf5").read_bytes())
    with h5py.File(stateless, "a") as f:
        for demo in f["data"].values():
            del demo["states"]
    with pytest.raises(ValueError, match=r"branch data without simulator states .*"
                                         r"env.world_model.branch needs"):
        branch_frames([stateless], SIZE, every=2)
    with pytest.raises(ValueError, match="reset data without simulator states"):
        reset_frames([stateless], SIZE, sim_states=True)
    assert len(reset_frames([stateless], SIZE)) == 1  # frames alone need no states
