"""A world model's predicted simulator states drawn and read by the real simulator
(``env.world_model.frames`` / ``proprio`` = simulator, envs/sim_view.py), on robosuite's
Lift: the view of a state the physics reached is what the real env shows there, and the
world-model env hands the policy that view of the states its state model predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs import load_config
from demos import Demo
from demos.layout import file_attributes
from demos.writer import write_file
from envs.robosuite_tasks import RobosuiteVectorEnv
from envs.sim import SimOptions
from envs.sim_view import SimulatorView, chunk_position_errors, open_loop_verdicts
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from worldmodel.data import ResetFrame
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel
from worldmodel.state_model import StateEpisode, StateModel

SIZE = 32  # what the simulator draws (env.image_size); the world model's frames are 16
OPTS = SimOptions(image_size=SIZE, max_episode_steps=20, fast_render=True)
# Lift's flattened MuJoCo state: time, qpos (7 arm joints, 2 fingers, the cube's free
# joint: xyz, quaternion), qvel (9 + 6)
LIFT_STATE, ARM_JOINT_0, CUBE_Z = 32, 1, 1 + 9 + 2
ONE = np.array([0])


@pytest.fixture(scope="module")
def real():
    """A Lift env six random actions after reset 3 (a scene other than the view's own)."""
    env = RobosuiteVectorEnv(1, 1, OPTS, "Lift")
    env.reset_group(0, 3)
    rng = np.random.default_rng(0)
    for _ in range(6):
        env.step(ONE, rng.uniform(-1, 1, (1, 7)))
    yield env
    env.close()


@pytest.fixture(scope="module")
def view():
    seen = SimulatorView(RobosuiteVectorEnv(1, 1, OPTS, "Lift"), LIFT_STATE)
    yield seen
    seen.close()


def _differing(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels where two uint8 images differ by more than 10 in a channel."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(-1) > 10).mean())


def test_the_view_of_a_state_the_physics_reached_is_what_the_real_env_shows(real, view):
    state = real.record_extras(ONE)["states"]
    obs = real.observe(ONE)
    seen = view.look(state)
    # robosuite observes after mj_step, whose body positions are those before the last
    # 2 ms substep integrated the joints: the arm's reading lags the state by that much
    # motion (a few mm at these random actions); the fingers' positions are read exactly
    np.testing.assert_allclose(seen.states[:, :6], obs.states[:, :6], atol=4e-3)
    np.testing.assert_allclose(seen.states[:, 6:], obs.states[:, 6:], atol=1e-6)
    assert _differing(seen.main, obs.main_images) < 0.01
    assert _differing(seen.wrist, obs.wrist_images) < 0.01
    assert _differing(view.look(_reset_state()[None]).main, obs.main_images) > 0.01


def _reset_state() -> np.ndarray:
    """Lift's state after reset 0 (the cube elsewhere, the arm at rest)."""
    env = RobosuiteVectorEnv(1, 1, OPTS, "Lift")
    env.reset_group(0, 0)
    state = env.record_extras(ONE)["states"][0]
    env.close()
    return state


def test_a_scene_of_another_state_size_is_refused():
    with pytest.raises(ValueError, match="predicts 30-D simulator states but this scene's "
                                         "are 32-D"):
        SimulatorView(RobosuiteVectorEnv(1, 1, OPTS, "Lift"), 30)


def _world_model(per_step: dict[int, float]) -> WorldModel:
    """A world model whose state model moves state entry i by ``per_step[i]`` every step,
    whatever the action (its network's output zeroed)."""
    torch.manual_seed(0)
    dynamics = StateModel(LIFT_STATE, 7, hidden=16, layers=1)
    with torch.no_grad():
        dynamics.dynamics[-1].weight.zero_()
        dynamics.dynamics[-1].bias.zero_()
        for i, change in per_step.items():
            dynamics.d_mean[i] = change
    return WorldModel(ConvFramePredictor(2, 4, 7, channels=4), SuccessCNN(4), -np.ones(7),
                      np.ones(7), 16, state_model=dynamics).eval()


def test_the_env_shows_and_reads_its_predicted_states_through_the_simulator(real, view):
    start = real.record_extras(ONE)["states"][0].astype(np.float32)
    starts = [ResetFrame(np.zeros((16, 16, 3), np.uint8), "lift the red cube", 0, start)]
    env = WorldModelVectorEnv(2, 2, _world_model({CUBE_Z: 0.05, ARM_JOINT_0: 0.05}), starts,
                              12, judge="state", frames="simulator", proprio="simulator",
                              view=view)
    env.reset_group(0, 0)
    first = env.observe(np.arange(2))
    shown = real.observe(ONE)
    assert first.main_images.shape == (2, SIZE, SIZE, 3)  # the simulator's size, not 16
    np.testing.assert_allclose(first.states, np.repeat(shown.states, 2, 0), atol=4e-3)
    assert _differing(first.main_images[0], shown.main_images[0]) < 0.01
    steps = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    predicted = env.sim[:, 0].numpy()  # one member's
    np.testing.assert_allclose(predicted[:, CUBE_Z] - start[CUBE_Z], 0.2, atol=1e-5)
    after = env.observe(np.arange(2))
    truth = view.look(predicted)
    np.testing.assert_array_equal(after.main_images, truth.main)
    np.testing.assert_array_equal(after.wrist_images, truth.wrist)
    np.testing.assert_array_equal(after.states, truth.states)
    # the arm turned (the end effector moved by centimetres), the cube rose into view
    assert np.abs(after.states[:, :3] - first.states[:, :3]).max() > 0.02
    assert _differing(after.main_images[0], first.main_images[0]) > 0.01
    assert len(steps) == 4 and steps[-1].frames.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(env.chunk_views[:, 0], env.chunk_views[:, -1])
    # the simulator's proprioception beside the world model's own frames (no render)
    mixed = WorldModelVectorEnv(2, 2, _world_model({ARM_JOINT_0: 0.05}), starts, 12,
                                judge="state", proprio="simulator", view=view)
    mixed.reset_group(0, 0)
    mixed.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    obs = mixed.observe(np.arange(2))
    assert obs.main_images.shape == (2, 16, 16, 3)  # the generator's
    member = mixed.sim[:, 0].numpy()  # the one member's predicted states
    np.testing.assert_array_equal(obs.states, view.look(member, draw=False).states)
    assert view.look(member, draw=False).main is None


def test_the_simulator_judge_pays_the_success_the_simulators_check_reads(view):
    """judge: simulator: a predicted state is a success where Lift's own check holds in it
    (the cube 4 cm above the table), whatever the state model's learned judge says."""
    start = _reset_state().astype(np.float32)
    starts = [ResetFrame(np.zeros((16, 16, 3), np.uint8), "lift the red cube", 0, start)]
    lifts = _world_model({CUBE_Z: 0.01})
    with torch.no_grad():  # its learned judge: a success everywhere, which is not read
        lifts.state_model.judge[-1].bias.fill_(20.0)
    env = WorldModelVectorEnv(2, 2, lifts, starts, 12, judge="simulator", frames="simulator",
                              view=view)
    env.reset_group(0, 0)
    steps = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    won = [bool(r.success[0]) for r in steps]
    # the simulator's check on the cube raised by hand 1, 2, ... cm from its resting place
    raised = np.repeat(start[None], 4, 0)
    raised[:, CUBE_Z] += 0.01 * np.arange(1, 5)
    held = view.succeeded(raised).tolist()
    first = held.index(True)
    assert not view.succeeded(start[None])[0] and first >= 1  # no success before the lift
    assert won.index(True) == first and not any(won[:first])
    assert steps[first].rewards.tolist() == [1.0, 1.0] and steps[first].terminated.all()
    assert all(r.rewards.sum() == 0 for r in steps[:first])
    still = WorldModelVectorEnv(2, 2, _world_model({}), starts, 12, judge="simulator",
                                frames="simulator", view=view)
    still.state_models.members[0].judge[-1].bias.data.fill_(20.0)
    still.reset_group(0, 0)
    assert not any(r.success.any() for r in still.step_chunk(
        np.arange(2), np.zeros((2, 4, 7), np.float32)))
    with pytest.raises(ValueError, match="the simulator's scene"):
        WorldModelVectorEnv(2, 2, lifts, starts, 12, judge="simulator")


def test_simulator_frames_need_the_state_judge_and_the_simulators_scene(view):
    starts = [ResetFrame(np.zeros((16, 16, 3), np.uint8), "lift", 0,
                         np.zeros(LIFT_STATE, np.float32))]
    model = _world_model({})
    with pytest.raises(ValueError, match="set env.world_model.judge=state or simulator"):
        WorldModelVectorEnv(2, 2, model, starts, 12, judge="both", frames="simulator",
                            view=view)
    with pytest.raises(ValueError, match="the simulator's scene"):
        WorldModelVectorEnv(2, 2, model, starts, 12, judge="state", proprio="simulator")


def test_the_config_builds_a_world_model_env_drawn_by_the_simulator(real, tmp_path):
    extras = real.record_extras(ONE)
    main = np.zeros((3, 16, 16, 3), np.uint8)
    demo = Demo("lift the red cube", np.zeros((3, 7), np.float32), np.zeros(3, np.float32),
                np.eye(3, dtype=bool)[2], np.zeros(3, bool), main, np.zeros((3, 8), np.float32),
                final_main_image=main[-1], init_state_id=0, task_id=0, episode_id=0,
                source="test", extras={"states": np.repeat(extras["states"], 3, 0)})
    write_file(tmp_path / "rec" / "lift_0.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    checkpoint = _world_model({CUBE_Z: 0.01}).save(tmp_path / "world_model.pt")
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", [
        f"env.image_size={SIZE}", f"env.world_model.checkpoint={checkpoint}",
        f"env.world_model.reset_data=[{tmp_path / 'rec'}]", "env.world_model.judge=state",
        "env.world_model.frames=simulator", "env.world_model.proprio=simulator",
        "model.cnn.read_state=true", "env.wrist_camera=true"])
    env = make_world_model_env(cfg.env, 2, 2, 7, 12, "cpu")
    try:
        env.reset_group(0, 0)
        obs = env.observe(np.arange(2))
        np.testing.assert_allclose(obs.states[0], real.observe(ONE).states[0], atol=4e-3)
        assert obs.wrist_images.shape == (2, SIZE, SIZE, 3)  # env.wrist_camera drawn too
    finally:
        env.close()


def test_chunk_position_errors_line_the_prediction_up_with_the_recording(view):
    """A state model that predicts no motion: each of its chunk's positions is where the
    arm was at the chunk's start, so its errors are copy-last's, up to the view's own
    reading error (benchmarks/bench_state_position.py measures real models with this)."""
    env = RobosuiteVectorEnv(1, 1, OPTS, "Lift")
    env.reset_group(0, 5)
    rng = np.random.default_rng(1)
    states, proprio, actions = [], [], []
    for _ in range(12):
        states.append(env.record_extras(ONE)["states"][0])
        proprio.append(env.observe(ONE).states[0])
        actions.append(rng.uniform(-1, 1, 7))
        env.step(ONE, actions[-1][None])
    env.close()
    episode = StateEpisode(np.stack(states).astype(np.float32),
                           np.stack(actions).astype(np.float32), np.zeros(12, bool),
                           np.stack(proprio).astype(np.float32))
    still = _world_model({}).state_model
    errors = chunk_position_errors(view, still, [episode], 4, 3)
    assert len(errors["predicted"]) == len(errors["copy_last"]) == (12 - 4) * 4
    assert errors["reading"].max() < 4e-3  # mm: robosuite observes a substep later
    assert errors["copy_last"].max() > 0.02  # the arm moved centimetres
    np.testing.assert_allclose(errors["predicted"], errors["copy_last"], atol=4e-3)


def test_open_loop_verdicts_tell_the_learned_judge_from_the_simulators_check(view):
    """A state model that lifts the cube 2 cm a step whatever the actions, and whose learned
    judge never calls a success: on an episode where the cube stayed on the table, the
    simulator's check calls the predicted states a success (the dynamics' error), the
    learned judge does not, the recorded states are no success, nor the outcome."""
    env = RobosuiteVectorEnv(1, 1, OPTS, "Lift")
    env.reset_group(0, 2)
    states, actions = [], np.zeros((6, 7), np.float32)
    for a in actions:
        states.append(env.record_extras(ONE)["states"][0])
        env.step(ONE, a[None])
    env.close()
    episode = StateEpisode(np.stack(states).astype(np.float32), actions, np.zeros(6, bool),
                           None)
    lifts = _world_model({CUBE_Z: 0.02}).state_model
    with torch.no_grad():
        lifts.judge[-1].bias.fill_(-20.0)  # a probability of ~0 everywhere
        lifts.judge[-1].weight.zero_()
    verdicts = open_loop_verdicts(view, lifts, [episode], 0.9)
    assert [verdicts[k].tolist() for k in ("learned", "simulator", "recorded", "real")] == \
        [[False], [True], [False], [False]]
    with torch.no_grad():
        lifts.judge[-1].bias.fill_(20.0)  # now it calls every state a success
    assert open_loop_verdicts(view, lifts, [episode], 0.9)["learned"].tolist() == [True]
    still = _world_model({}).state_model  # the cube never rises: no success anywhere
    assert open_loop_verdicts(view, still, [episode], 0.9)["simulator"].tolist() == [False]
