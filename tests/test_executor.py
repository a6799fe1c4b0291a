"""The actor core: receding-horizon execution and per-chunk records."""

import numpy as np

from actors.executor import IdSource, StageExecutor
from envs.synthetic import SyntheticReachEnv


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
