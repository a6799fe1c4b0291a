"""The synthetic env: group resets, observation contract, success, truncation, cost."""

import time

import numpy as np

from envs import make_env
from envs.synthetic import SyntheticReachEnv
from configs import EnvConfig


def test_group_members_start_identical_and_groups_differ():
    env = SyntheticReachEnv(num_envs=8, group_size=4, image_size=48)
    env.reset_group(0, init_state_id=11)
    env.reset_group(1, init_state_id=12)
    obs = env.observe(np.arange(8))
    for e in range(1, 4):
        np.testing.assert_array_equal(obs.main_images[e], obs.main_images[0])
        np.testing.assert_array_equal(obs.states[e], obs.states[0])
        assert obs.task_descriptions[e] == obs.task_descriptions[0]
    assert not np.array_equal(obs.main_images[4], obs.main_images[0])
    env.reset_group(1, init_state_id=11)  # the same id gives the same state
    np.testing.assert_array_equal(env.observe(np.arange(4, 8)).main_images, obs.main_images[:4])


def test_observation_contract():
    env = make_env(EnvConfig(image_size=224), 4, 2, action_dim=7)
    env.reset_group(0, 1)
    env.reset_group(1, 2)
    obs = env.observe(np.arange(4))
    assert obs.main_images.dtype == np.uint8 and obs.main_images.shape == (4, 224, 224, 3)
    assert obs.states.dtype == np.float32 and obs.states.shape == (4, env.state_dim)
    assert len(obs.task_descriptions) == 4 and obs.wrist_images is None
    assert obs.task_descriptions[0].startswith("move to the ")
    colour = obs.task_descriptions[0].split()[-2]
    # the named colour is drawn in the image
    from envs.synthetic import COLOURS
    assert (obs.main_images[0] == np.array(COLOURS[colour], np.uint8)).all(-1).any()


def _steer_to_goal(env, e):
    goal = env.targets[e, env.goal[e]]
    direction = goal - env.agent[e]
    action = np.zeros((1, 7), np.float32)
    action[0, :2] = np.clip(direction / env.speed, -1, 1)
    return action


def test_reaching_the_named_target_succeeds():
    env = SyntheticReachEnv(num_envs=1, group_size=1, image_size=32, max_episode_steps=200)
    env.reset_group(0, 5)
    for _ in range(100):
        res = env.step(np.array([0]), _steer_to_goal(env, 0))
        if res.terminated[0]:
            break
    assert res.success[0] and res.terminated[0] and not res.truncated[0]
    assert res.rewards[0] >= 1.0


def test_truncation_at_the_step_limit():
    env = SyntheticReachEnv(num_envs=2, group_size=2, image_size=32, max_episode_steps=5)
    env.reset_group(0, 3)
    for t in range(5):
        res = env.step(np.arange(2), np.zeros((2, 7), np.float32))
    assert res.truncated.all() and not res.success.any()


def test_progress_reward_is_positive_towards_the_goal():
    env = SyntheticReachEnv(1, 1, image_size=32, progress_reward=2.0, agent_speed=0.02)
    env.reset_group(0, 8)
    assert env.step(np.array([0]), _steer_to_goal(env, 0)).rewards[0] > 0
    assert env.step(np.array([0]), -_steer_to_goal(env, 0)).rewards[0] < 0


def test_step_cost_is_spent():
    env = SyntheticReachEnv(2, 2, image_size=32, step_busy_ms=5.0, step_sleep_ms=5.0)
    env.reset_group(0, 1)
    start = time.perf_counter()
    env.step(np.arange(2), np.zeros((2, 7), np.float32))
    assert time.perf_counter() - start >= 0.019  # 2 envs x (5 ms busy + 5 ms sleep)
