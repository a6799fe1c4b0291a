"""The actor core: receding-horizon execution and per-chunk records."""

import numpy as np

from actors.executor import StageExecutor
from envs.synthetic import SyntheticReachEnv
from protocol.ids import IdSource


def _stage(n, max_steps=100, speed=0.01):
    env = SyntheticReachEnv(num_envs=2, group_size=2, image_size=32,
                            max_episode_steps=max_steps, agent_speed=speed, target_radius=0.05)
    seeds = iter(range(100, 200))
    return env, StageExecutor(env, [0], n, IdSource(3), lambda group: next(seeds))


def _chunks(b, t, n, first=1.0, rest=-1.0):
    """Chunks whose first n actions move right, the others left."""
    a = np.zeros((b, t, 7), np.float32)
    a[:, :n, 0], a[:, n:, 0] = first, rest
    return a


def test_only_the_first_n_actions_are_executed():
    t, n = 8, 3
    env, stage = _stage(n)
    obs = stage.observe()
    x0 = env.agent[:, 0].copy()
    assert stage.execute(_chunks(2, t, n), np.zeros((2, t, 7), np.float32), None, 4) == []
    np.testing.assert_allclose(env.agent[:, 0], np.minimum(x0 + n * 0.01, 1.0), atol=1e-6)
    assert (env.steps == n).all() and stage.env_steps == 2 * n
    rec = stage.records[0]
    assert rec.rows["executed"] == [n] and rec.rows["policy_versions"] == [4]
    np.testing.assert_array_equal(rec.rows["main_images"][0], obs.main_images[0])
    assert rec.rows["actions"][0].shape == (t, 7)  # the whole chunk is recorded


def test_episode_ending_mid_chunk_stops_execution_and_emits_the_group():
    t, n = 8, 8
    env, stage = _stage(n, max_steps=5)
    stage.observe()
    episodes = stage.execute(_chunks(2, t, n, 0.0, 0.0), np.zeros((2, t, 7), np.float32), None, 0)
    assert len(episodes) == 2  # the whole group ended: both episodes go out together
    for ep in episodes:
        assert ep.executed.tolist() == [5] and ep.dones.tolist() == [True]
        assert ep.truncated and ep.env_steps == 5 and ep.group_size == 2
        assert ep.episode_id >> 32 == 3 and ep.group_id == episodes[0].group_id
    assert episodes[0].episode_id != episodes[1].episode_id
    # the group was reset to a fresh shared state with new ids
    assert (env.steps == 0).all()
    assert stage.records[0].group_id != episodes[0].group_id


def test_finished_envs_wait_for_their_group():
    env, stage = _stage(4, max_steps=100, speed=0.05)
    stage.observe()
    stage.records[1].finished = True  # env 1 is done; env 0 still acts
    obs = stage.observe()
    assert len(obs) == 1


def test_a_failed_reset_draws_another_state_in_training_and_raises_in_eval():
    import pytest

    class Flaky(SyntheticReachEnv):
        def reset_group(self, group, init_state_id):
            if init_state_id == 101:
                raise RuntimeError("cannot reset an env to initial state 101")
            super().reset_group(group, init_state_id)

    env = Flaky(num_envs=2, group_size=2, image_size=32)
    seeds = iter([101, 102])
    stage = StageExecutor(env, [0], 4, IdSource(0), lambda group: next(seeds))
    assert stage.records[0].init_state_id == 102
    seeds = iter([101, 102])
    with pytest.raises(RuntimeError, match="initial state 101"):
        StageExecutor(env, [0], 4, IdSource(0), lambda group: next(seeds),
                      resample_failed_resets=False)


class _Hook:
    """Keeps what the executor shows a hook."""

    wants_observations = True

    def __init__(self):
        self.steps, self.resets, self.ends = [], [], []

    def on_reset(self, env_id, episode_id, init_state_id):
        self.resets.append((env_id, init_state_id))

    def on_step(self, env_ids, obs, actions, result):
        self.steps.append((env_ids.copy(), obs, actions.copy(), result))

    def on_end(self, env_id, instruction, success):
        self.ends.append((env_id, success))


def test_an_expert_acts_closed_loop_and_hooks_see_each_step_before_it():
    from experts.synthetic import ReachExpert

    env = SyntheticReachEnv(num_envs=2, group_size=2, image_size=32, max_episode_steps=40,
                            agent_speed=0.02, target_radius=0.05)
    hook, seeds = _Hook(), iter(range(100, 200))
    stage = StageExecutor(env, [0], 4, IdSource(0), lambda group: next(seeds), [hook],
                          expert=ReachExpert(env))
    first = stage.observe()
    stage.execute(None, None, None, 0)
    assert len(hook.steps) == 4 and hook.resets == [(0, 100), (1, 100)]
    # step 0 is shown the observation the chunk was asked with; later ones a fresh one
    np.testing.assert_array_equal(hook.steps[0][1].main_images, first.main_images)
    for k, (ids, obs, actions, _) in enumerate(hook.steps):
        goal = env.targets[ids, env.goal[ids]]
        # each action heads for the goal from where the agent was just before it
        before = obs.states[:, :2]
        expected = np.clip((goal - before) / env.speed, -1, 1)
        np.testing.assert_allclose(actions[:, :2], expected, atol=1e-5)
    rec = stage.records[0]
    np.testing.assert_allclose(rec.rows["actions"][0][:, :2],
                               np.stack([s[2][0, :2] for s in hook.steps]), atol=1e-6)


def test_action_noise_perturbs_the_arm_dims_only_within_bounds():
    env, _ = _stage(2)
    seeds = iter(range(100, 200))
    stage = StageExecutor(env, [0], 2, IdSource(0), lambda group: next(seeds),
                          action_noise=0.5, seed=1)
    actions = np.zeros((64, 7), np.float32)
    actions[:, -1] = 1.0
    noisy = stage._perturb(actions)
    assert noisy[:, :-1].std() > 0.3 and np.abs(noisy).max() <= 1.0
    np.testing.assert_array_equal(noisy[:, -1], 1.0)  # the gripper is not jittered


def test_a_non_finite_reward_ends_the_episode_as_a_simulator_error():
    env, stage = _stage(8)
    real_step = env.step

    def step(env_ids, actions):
        res = real_step(env_ids, actions)
        rewards = res.rewards.copy()
        rewards[env_ids == 1] = np.nan  # env 1's simulator goes wrong
        return type(res)(rewards, res.terminated, res.truncated, res.success, res.errors)

    env.step = step
    stage.observe()
    stage.execute(_chunks(2, 8, 8), np.zeros((2, 8, 7), np.float32), None, 0)
    bad, good = stage.records[1], stage.records[0]
    assert bad.finished and bad.env_error == "the env returned a non-finite reward"
    assert bad.rows["executed"] == [1] and np.isfinite(bad.rows["rewards"]).all()
    assert not good.finished and good.env_error == ""
