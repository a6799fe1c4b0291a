"""MuJoCo's forward kinematics in torch (worldmodel/kinematics.py) on robosuite's Lift,
against MuJoCo's own ``mj_kinematics``, and a state model that reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.robosuite_tasks import RobosuiteVectorEnv
from envs.sim import SimOptions
from envs.sim_view import scene_kinematics
from worldmodel.kinematics import KinematicTree, body_positions
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel
from worldmodel.state_model import StateModel, losses

OPTS = SimOptions(image_size=32, max_episode_steps=20, fast_render=True)
LIFT_STATE, CUBE = 32, slice(10, 17)  # the cube's free joint: qpos 9..15 after time


@pytest.fixture(scope="module")
def lift():
    env = RobosuiteVectorEnv(1, 1, OPTS, "Lift")
    env.reset_group(0, 0)
    yield env
    env.close()


def _random_states(env, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` flattened Lift states with every joint anywhere in its range and the cube at a
    random pose (a quaternion left unnormalised: MuJoCo normalises it too)."""
    model = env.mujoco_model(0)
    base = env.slots[0].sim_env.sim.get_state().flatten()
    states = np.repeat(base[None], n, 0)
    for j in range(model.njnt):
        low, high = model.jnt_range[j] if model.jnt_limited[j] else (-np.pi, np.pi)
        if model.jnt_type[j] in (2, 3):  # slide, hinge
            states[:, 1 + model.jnt_qposadr[j]] = rng.uniform(low, high, n)
    states[:, CUBE] = np.concatenate([rng.uniform(-0.3, 0.3, (n, 3)),
                                      rng.normal(size=(n, 4)) * 3], 1)
    return states


def test_every_body_is_where_mujoco_puts_it(lift):
    model = lift.mujoco_model(0)
    tree = KinematicTree.from_mujoco(model)
    states = _random_states(lift, 64, np.random.default_rng(0))
    want = body_positions(model, states)
    got = tree.positions(torch.from_numpy(states)).numpy()
    assert np.abs(got - want).max() < 1e-9
    assert np.abs(want[1:] - want[:1]).max() > 0.1  # the states differ: not one pose
    # the tree rebuilt from its spec (what a checkpoint keeps) reads the same
    again = KinematicTree(**tree.spec()).positions(torch.from_numpy(states)).numpy()
    np.testing.assert_array_equal(again, got)


def test_features_are_the_moving_bodies_and_the_cube_relative_to_them(lift):
    model = lift.mujoco_model(0)
    tree = KinematicTree.from_mujoco(model)
    names = [tree.names[b] for b in tree.moving]
    assert "cube_main" in names and "gripper0_leftfinger" in names
    assert "table" not in names and "mount0_base" not in names  # fixed to the world
    assert [tree.names[o] for o in tree.objects] == ["cube_main"]
    states = torch.from_numpy(_random_states(lift, 8, np.random.default_rng(1)))
    f = tree.features(states)
    assert f.shape == (8, tree.feature_dim)
    x = tree.positions(states)
    cube, finger = tree.names.index("cube_main"), tree.names.index("gripper0_leftfinger")
    others = [b for b in tree.moving if b != cube]
    at = 3 * len(tree.moving) + 3 * others.index(finger)
    torch.testing.assert_close(f[:, at:at + 3], x[:, cube] - x[:, finger])


def test_a_state_model_reads_the_scenes_tree_and_keeps_it_in_its_file(lift, tmp_path):
    cfg = _lift_config()
    spec = scene_kinematics(cfg, 7, LIFT_STATE)  # what the training stage builds
    assert spec == KinematicTree.from_mujoco(lift.mujoco_model(0)).spec()
    with pytest.raises(ValueError, match="name the task they were recorded in"):
        scene_kinematics(cfg, 7, LIFT_STATE + 1)
    torch.manual_seed(0)
    model = StateModel(LIFT_STATE, 7, hidden=32, layers=2, kinematics=spec)
    states = _random_states(lift, 16, np.random.default_rng(2)).astype(np.float32)
    with torch.no_grad():
        model.k_std.fill_(0.1)
    model.eval()
    actions = torch.randn(16, 7)
    wm = WorldModel(ConvFramePredictor(2, 4, 7, channels=4), SuccessCNN(4), -np.ones(7),
                    np.ones(7), 16, state_model=model)
    back = WorldModel.load(wm.save(tmp_path / "world_model.pt")).state_model
    assert back.kinematics is not None and back.spec() == model.spec()
    s = torch.from_numpy(states)
    with torch.no_grad():
        torch.testing.assert_close(back.step(s, actions), model.step(s, actions))
        # the dynamics read the bodies' positions: the same state and action, the
        # features' normaliser moved, step elsewhere
        plain = model.step(s, actions)
        model.k_mean.copy_(model.k_mean + 1.0)
        assert (model.step(s, actions) - plain).abs().max() > 1e-4


def _lift_config():
    from configs import load_config
    from tests.conftest import ROOT

    return load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                       ["env.image_size=32"]).env


def test_the_kinematic_loss_is_the_bodies_position_error_in_the_features_units(lift):
    spec = KinematicTree.from_mujoco(lift.mujoco_model(0)).spec()
    torch.manual_seed(0)
    model = StateModel(LIFT_STATE, 7, hidden=32, layers=2, kinematics=spec)
    rng = np.random.default_rng(3)
    states = torch.from_numpy(_random_states(lift, 12, rng).astype(np.float32))
    with torch.no_grad():
        model.k_std.fill_(0.05)
    first, nexts = states[:4], states[4:].view(4, 2, LIFT_STATE)
    window = (first, torch.randn(4, 2, 7), nexts, torch.zeros(4, 2, dtype=torch.bool),
              torch.tensor([[True, True], [True, False], [True, True], [True, True]]),
              torch.zeros(4, 2, 0))
    with torch.no_grad():
        plain = losses(model, window)[0]
        weighted = losses(model, window, kinematic_weight=0.5)[0]
        pred = model.rollout(first, window[1])
        k = model.kinematics.features
        err = ((k(pred) - k(nexts)) / 0.05).pow(2).mean(-1)[window[4]].mean()
        again, features = model.rollout_with_features(first, window[1])  # what losses uses
    torch.testing.assert_close(again, pred)
    torch.testing.assert_close(features, k(pred))
    torch.testing.assert_close(weighted - plain, 0.5 * err)
    assert float(err) > 1  # random states: far apart


def test_a_kinematic_weight_needs_the_tree():
    from configs import ConfigError, load_config
    from tests.conftest import ROOT

    with pytest.raises(ConfigError, match="kinematic_weight >= 0, and above 0 only with"):
        load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                    ["world_model.state.kinematics=false",
                     "world_model.state.kinematic_weight=1"])


def test_train_world_model_builds_the_tree_from_the_recordings_scene(lift, tmp_path):
    """Real Lift recordings (random actions, the simulator's states) -> launch's
    train_world_model with world_model.state.kinematics -> a world-model env that steps on
    the state model reading the scene's tree."""
    import json

    from configs import load_config
    from demos import Demo
    from demos.layout import file_attributes
    from demos.writer import write_file
    from envs.world_model import make_world_model_env
    from tests.conftest import ROOT
    from worldmodel import train as wm_train

    one, rng = np.array([0]), np.random.default_rng(4)
    for e in range(8):
        lift.reset_group(0, e)
        states, frames, actions = [], [], rng.uniform(-1, 1, (10, 7)).astype(np.float32)
        for a in actions:
            states.append(lift.record_extras(one)["states"][0])
            frames.append(lift.observe(one).main_images[0])
            lift.step(one, a[None])
        # labels of both kinds (what the random actions did matters not here)
        success = np.arange(10) >= (7 if e % 2 else 10)
        demo = Demo("lift the red cube", actions, np.zeros(10, np.float32),
                    np.eye(10, dtype=bool)[9], success, np.stack(frames),
                    np.zeros((10, 8), np.float32), final_main_image=frames[-1],
                    init_state_id=e, task_id=0, episode_id=e, source="test",
                    extras={"states": np.stack(states)})
        write_file(tmp_path / "rec" / f"lift_{e}.hdf5", demo,
                   file_attributes(demo, "Lift", {}, "p"), 0)
    out = tmp_path / "wm"
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", [
        f"run.log_dir={out}", "run.progress_every_s=0", "env.image_size=32",
        f"world_model.datasets=[{tmp_path / 'rec'}]", "world_model.val_fraction=0.25",
        "world_model.state.steps=10", "world_model.state.hidden=32",
        "world_model.state.batch_size=16", "world_model.state.kinematics=true",
        "world_model.state.kinematic_weight=1",
        f"env.world_model.checkpoint={out / 'world_model.pt'}",
        f"env.world_model.reset_data=[{tmp_path / 'rec'}]"])
    assert wm_train.run(cfg) == 0
    assert json.loads((out / "world_model_summary.json").read_text())["steps"]["state"] == 10
    trained = WorldModel.load(out / "world_model.pt").state_model
    assert trained.kinematics.spec() == KinematicTree.from_mujoco(lift.mujoco_model(0)).spec()
    assert float(trained.k_std.min()) >= 1e-3  # fitted: the features' own scale
    env = make_world_model_env(cfg.env, 2, 2, 7, 16, "cpu")
    try:
        env.reset_group(0, 1)
        assert len(env.step_chunk(np.arange(2), np.zeros((2, 8, 7), np.float32))) == 8
    finally:
        env.close()
