"""LIBERO and robosuite through the project's env layer: real simulators, real rendering."""

from __future__ import annotations

import numpy as np
import pytest

from configs import EnvConfig, LiberoEnvConfig, RobosuiteEnvConfig
from envs import check_env_config, eval_init_states, make_env, max_episode_steps
from envs.base import INIT_STRIDE

SIZE = 64
NOOP = np.array([[0, 0, 0, 0, 0, 0, -1]], np.float32)


def libero_cfg(suite="libero_spatial", task_ids=(0, 1), **kw) -> EnvConfig:
    base = dict(kind="libero", libero=LiberoEnvConfig(suite, list(task_ids)), image_size=SIZE,
                max_episode_steps=40, fast_render=True)
    return EnvConfig(**{**base, **kw})


def robosuite_cfg(task: str, **kw) -> EnvConfig:
    return EnvConfig(kind="robosuite", robosuite=RobosuiteEnvConfig(task), **kw)


@pytest.fixture(scope="module")
def libero():
    """Two groups of two LIBERO-Spatial envs: group 0 and 1 at different initial states."""
    env = make_env(libero_cfg(), 4, 2, 7)
    env.reset_group(0, 0 * INIT_STRIDE + 3)
    env.reset_group(1, 0 * INIT_STRIDE + 4)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift():
    env = make_env(robosuite_cfg("Lift", image_size=SIZE, max_episode_steps=30,
                                 fast_render=True), 4, 2, 7)
    env.reset_group(0, 11)
    env.reset_group(1, 12)
    yield env
    env.close()


def _contract(env, n):
    obs = env.observe(np.arange(n))
    assert obs.main_images.dtype == np.uint8 and obs.main_images.shape == (n, SIZE, SIZE, 3)
    assert obs.wrist_images.dtype == np.uint8 and obs.wrist_images.shape == (n, SIZE, SIZE, 3)
    assert obs.states.dtype == np.float32 and obs.states.shape == (n, 8)
    assert len(obs.task_descriptions) == n and all(obs.task_descriptions)
    assert obs.main_images.std() > 5 and obs.wrist_images.std() > 5  # a scene, not a blank
    res = env.step(np.arange(n), np.repeat(NOOP, n, 0))
    assert res.rewards.dtype == np.float32 and res.rewards.shape == (n,)
    for flags in (res.terminated, res.truncated, res.success):
        assert flags.dtype == bool and flags.shape == (n,)
    assert res.errors == [""] * n
    return obs


def test_libero_contract_and_instruction(libero):
    obs = _contract(libero, 4)
    from envs.libero import LiberoSuite

    assert obs.task_descriptions[0] == LiberoSuite("libero_spatial").instruction(0)
    assert libero.max_episode_steps == 40
    assert max_episode_steps(libero_cfg("libero_10", max_episode_steps=0)) == 520
    assert max_episode_steps(libero_cfg(max_episode_steps=0)) == 220


def test_robosuite_lift_contract(lift):
    obs = _contract(lift, 4)
    assert obs.task_descriptions[0] == "lift the red cube"


@pytest.mark.parametrize("name", ["libero", "lift"])
def test_groups_start_alike_and_differ_across_groups(name, request):
    env = request.getfixturevalue(name)
    env.reset_group(0, 5)
    env.reset_group(1, 6)
    obs = env.observe(np.arange(4))
    for a, b in ((0, 1), (2, 3)):  # within a group: bit for bit
        assert np.array_equal(obs.main_images[a], obs.main_images[b])
        assert np.array_equal(obs.wrist_images[a], obs.wrist_images[b])
        assert np.array_equal(obs.states[a], obs.states[b])
    assert not np.array_equal(obs.main_images[0], obs.main_images[2])
    # The same actions keep a group's envs alike; resetting to an id reproduces it.
    action = np.array([[0.3, -0.2, 0.1, 0, 0, 0.1, 1]] * 2, np.float32)  # gripper closing
    for _ in range(3):
        env.step(np.array([0, 1]), action)
    after = env.observe(np.array([0, 1]))
    assert np.array_equal(after.main_images[0], after.main_images[1])
    assert not np.array_equal(after.main_images[0], obs.main_images[0])
    # An env's past does not leak into its next episode: env 0 (which moved) and env 2
    # (which did not), reset to one id and stepped alike, stay alike.
    env.reset_group(0, 6)
    for _ in range(3):
        env.step(np.array([0, 2]), action)
    again = env.observe(np.array([0, 2]))
    assert np.array_equal(again.main_images[0], again.main_images[1])
    assert np.array_equal(again.states[0], again.states[1])


def _red_object_centroid(env, root_body: int):
    """Paint one object's geoms red; return (red pixel centroid, its pinhole projection
    into an upright image) as (row, col) pairs."""
    slot = env.slots[0]
    m, d = slot.renderer.model, slot.renderer.data
    geoms = [g for g in range(m.ngeom) if m.body_rootid[m.geom_bodyid[g]] == root_body]
    saved = m.geom_matid[geoms].copy(), m.geom_rgba[geoms].copy()
    m.geom_matid[geoms], m.geom_rgba[geoms] = -1, [1, 0, 0, 1]
    try:
        img = env.observe(np.array([0])).main_images[0].astype(int)
    finally:
        m.geom_matid[geoms], m.geom_rgba[geoms] = saved
    rows, cols = np.nonzero((img[..., 0] > 150) & (img[..., 1] < 60) & (img[..., 2] < 60))
    assert len(rows) > 10, "the painted object is not in view"
    cam = slot.cameras[0]
    # MuJoCo cameras look down -z with +y up: the pinhole projection of an upright image.
    c = d.cam_xmat[cam].reshape(3, 3).T @ (d.geom_xpos[geoms].mean(0) - d.cam_xpos[cam])
    f = (SIZE / 2) / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
    projected = (SIZE / 2 - f * c[1] / -c[2], SIZE / 2 + f * c[0] / -c[2])
    return (rows.mean(), cols.mean()), projected


@pytest.mark.parametrize("orientation", ["upright", "libero"])
def test_libero_images_are_upright(orientation):
    env = make_env(libero_cfg(task_ids=[0], image_orientation=orientation), 1, 1, 7)
    try:
        env.reset_group(0, 3)
        plate = env.slots[0].sim_env.env.obj_body_id["plate_1"]
        (row, col), (prow, pcol) = _red_object_centroid(env, plate)
    finally:
        env.close()
    assert abs(row - prow) < 0.08 * SIZE  # up is up in both conventions
    want_col = pcol if orientation == "upright" else SIZE - 1 - pcol  # libero: mirrored
    assert abs(col - want_col) < 0.08 * SIZE
    assert abs(pcol - (SIZE - 1 - pcol)) > 0.2 * SIZE  # the plate is off-centre: a real test


def test_robosuite_images_are_upright(lift):
    lift.reset_group(0, 7)
    env = lift.slots[0].sim_env
    (row, col), (prow, pcol) = _red_object_centroid(lift, env.sim.model.body_name2id(
        env.cube.root_body))
    assert abs(row - prow) < 0.08 * SIZE and abs(col - pcol) < 0.08 * SIZE


def test_libero_success_from_the_benchmark_check(libero):
    libero.reset_group(0, 3)
    inner = libero.slots[0].sim_env.env
    assert inner.parsed_problem["goal_state"] == [["on", "akita_black_bowl_1", "plate_1"]]
    res = libero.step(np.array([0]), NOOP)
    assert not res.success[0] and res.rewards[0] == 0
    # Put the bowl onto the plate and let it settle: the BDDL goal holds.
    plate = inner.sim.data.body_xpos[inner.obj_body_id["plate_1"]].copy()
    joint = inner.objects_dict["akita_black_bowl_1"].joints[-1]
    inner.sim.data.set_joint_qpos(joint, np.concatenate([plate + [0, 0, 0.03], [1, 0, 0, 0]]))
    inner.sim.forward()
    for _ in range(15):
        res = libero.step(np.array([0]), NOOP)
        if res.success[0]:
            break
    assert res.success[0] and res.terminated[0] and res.rewards[0] == 1.0
    assert not res.truncated[0]


def test_lift_success_and_truncation(lift):
    lift.reset_group(0, 3)
    env = lift.slots[0].sim_env
    res = lift.step(np.array([0, 1]), np.repeat(NOOP, 2, 0))
    assert not res.success.any()
    pos = env.sim.data.get_joint_qpos(env.cube.joints[0]).copy()
    env.sim.data.set_joint_qpos(env.cube.joints[0], np.concatenate([pos[:3] + [0, 0, 0.15],
                                                                     pos[3:]]))
    env.sim.forward()
    res = lift.step(np.array([0, 1]), np.repeat(NOOP, 2, 0))
    assert res.success.tolist() == [True, False] and res.rewards.tolist() == [1.0, 0.0]
    for _ in range(lift.max_episode_steps - 3):
        res = lift.step(np.array([1]), NOOP)
        assert not res.truncated[0]
    res = lift.step(np.array([1]), NOOP)
    assert res.truncated[0] and not res.terminated[0]


def test_state_7d_adaptation():
    env7 = make_env(libero_cfg(task_ids=[0], state_dim=7), 1, 1, 7)
    try:
        env7.reset_group(0, 2)
        full = env7.slots[0].state  # the 8-D state the env keeps
        s7 = env7.observe(np.array([0])).states[0]
    finally:
        env7.close()
    assert env7.state_dim == 7 and s7.shape == (7,) and s7.dtype == np.float32
    np.testing.assert_allclose(s7[:6], full[:6])
    np.testing.assert_allclose(s7[6], 0.5 * (full[6] + full[7]), rtol=1e-6)
    assert abs(full[6] + full[7]) < 1e-3 < abs(full[6])  # the fingers mirror each other


def test_simulator_error_ends_only_that_episode(lift):
    lift.reset_group(0, 4)
    lift.reset_group(1, 4)
    data = lift.slots[1].sim_env.sim.data._data
    data.qvel[:] = np.nan  # a blown-up simulation in env 1
    res = lift.step(np.arange(4), np.repeat(NOOP, 4, 0))
    assert res.errors[1] and not res.errors[0] and not res.errors[2]
    assert "MuJoCo" in res.errors[1] or "non-finite" in res.errors[1]

    def broken(action):
        raise RuntimeError("simulator exploded")

    lift.slots[2].sim_env.step = broken  # an exception inside the simulator call
    try:
        res = lift.step(np.arange(4), np.repeat(NOOP, 4, 0))
    finally:
        del lift.slots[2].sim_env.step
    assert res.errors[2] == "RuntimeError: simulator exploded" and not res.errors[3]
    lift.reset_group(0, 5)  # a reset recovers the env
    lift.reset_group(1, 5)
    assert lift.step(np.arange(4), np.repeat(NOOP, 4, 0)).errors == [""] * 4


def test_unknown_names_fail_with_the_valid_ones():
    with pytest.raises(ValueError, match="libero_spatial.*libero_90"):
        check_env_config(libero_cfg("libero_spatail"))
    with pytest.raises(ValueError, match=r"valid: 0\.\.9"):
        check_env_config(libero_cfg("libero_goal", [3, 12]))
    with pytest.raises(ValueError, match="Lift.*NutAssemblySquare|Door.*Lift"):
        check_env_config(robosuite_cfg("Liftt"))
    with pytest.raises(ValueError, match="7-D actions"):
        make_env(libero_cfg(), 2, 2, 6)


def test_eval_init_states_cover_every_task_and_trial():
    ids = eval_init_states(libero_cfg("libero_object", []), 50)
    assert len(ids) == 500 and len(set(ids)) == 500
    assert {i // INIT_STRIDE for i in ids} == set(range(10))
    assert eval_init_states(EnvConfig(kind="robosuite"), 3) == [0, 1, 2]


def test_launch_refuses_an_unknown_suite_before_starting_roles(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config",
         str(ROOT / "configs/libero_spatial_grpo_tiny.yaml"), f"run.log_dir={tmp_path}",
         "env.libero.suite=libero_spatail"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "unknown LIBERO suite 'libero_spatail'; valid: ['libero_spatial'" in result.stdout
    assert not list(tmp_path.glob("learner-0.log"))  # no role was started


@pytest.mark.parametrize("task", ["Stack", "PickPlaceCan", "Door", "NutAssemblySquare"])
def test_robosuite_tasks_build_and_step(task):
    from envs.robosuite_tasks import INSTRUCTIONS

    env = make_env(robosuite_cfg(task, image_size=32, fast_render=True, max_episode_steps=10),
                   2, 2, 7)
    try:
        env.reset_group(0, 1)
        obs = env.observe(np.arange(2))
        assert obs.main_images.shape == (2, 32, 32, 3) and obs.states.shape == (2, 8)
        assert obs.task_descriptions == [INSTRUCTIONS[task]] * 2
        assert np.array_equal(obs.main_images[0], obs.main_images[1])
        res = env.step(np.arange(2), np.repeat(NOOP, 2, 0))
        assert res.errors == ["", ""] and not res.success.any()
    finally:
        env.close()


def test_a_failed_reset_rebuilds_the_simulator(lift):
    old = lift.slots[0].sim_env

    def broken():
        raise RuntimeError("placement failed")

    old.reset = broken
    lift.reset_group(0, 9)
    assert lift.slots[0].sim_env is not None and lift.slots[0].sim_env is not old
    obs = lift.observe(np.array([0, 1]))
    assert np.array_equal(obs.main_images[0], obs.main_images[1])  # still a group
    assert lift.step(np.array([0, 1]), np.repeat(NOOP, 2, 0)).errors == ["", ""]


def test_generated_libero_states_are_seeded_new_placements(libero):
    """State index >= 50: the task's own sampler, seeded by the id, never an official state."""
    from envs.libero import LiberoSuite

    official = LiberoSuite("libero_spatial").init_states(0)
    sims = []
    for state in (150, 150, 151):
        libero.reset_group(0, state)
        sims.append(libero.record_extras(np.array([0, 1]))["states"])
    np.testing.assert_array_equal(sims[0][0], sims[0][1])  # a group starts alike
    np.testing.assert_array_equal(sims[0], sims[1])  # the same id, the same placement
    assert not np.array_equal(sims[0][0], sims[2][0])
    libero.reset_group(0, 3)  # an official state, after settling
    settled = libero.record_extras(np.array([0]))["states"][0]
    qpos = slice(1, 1 + libero.slots[0].sim_env.sim.model.nq)
    # an official state and a generated one put the objects in different places
    assert np.abs(settled[qpos] - sims[0][0][qpos]).max() > 1e-3
    assert official.shape[1] == settled.shape[0]


def test_held_out_training_never_draws_an_evaluation_state(libero):
    from envs.base import EVAL_STATES

    rng = np.random.default_rng(0)
    libero.held_out = True
    try:
        draws = [libero.sample_init_state(g, rng) % INIT_STRIDE for g in range(200)]
    finally:
        libero.held_out = False
    assert min(draws) >= EVAL_STATES
    assert max(libero.sample_init_state(0, rng) % INIT_STRIDE for _ in range(100)) < 50


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["libero_spatial", "libero_object", "libero_goal",
                                   "libero_10", "libero_90"])
def test_every_libero_suite_builds_and_steps(suite):
    """The last task of each suite (the first is used everywhere else), from its first
    official initial state: one observation and one step through the env layer."""
    from envs.libero import SUITES, LiberoSuite
    assert suite in SUITES
    last = LiberoSuite(suite).num_tasks - 1
    env = make_env(libero_cfg(suite=suite, task_ids=[last]), 1, 1, 7)
    try:
        env.reset_group(0, last * INIT_STRIDE + 0)  # the task id, then the state index
        obs = _contract(env, 1)
        assert obs.task_descriptions[0] == LiberoSuite(suite).instruction(last)
    finally:
        env.close()
