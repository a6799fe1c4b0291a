"""envs/observation_fields.py is the one list of observation arrays: the messages carry
exactly its fields, and an optional view (here the extra camera views) goes from the env
through the actor to the server's batch and through the trajectory to the learner's."""

import dataclasses

import numpy as np

from actors.executor import StageExecutor
from envs import observation_fields as of
from envs.base import EnvObs
from envs.synthetic import SyntheticReachEnv
from learner.batch import build_batch
from protocol.codec import decode, encode
from protocol.ids import IdSource
from protocol.messages import ObsRequest, Trajectory
from protocol.spec import ArraySpec, wire_fields


def _arrays(cls) -> dict:
    return {name: spec for name, spec in wire_fields(cls) if isinstance(spec, ArraySpec)}


def test_the_messages_carry_exactly_the_observation_arrays():
    env_fields = {f.name for f in dataclasses.fields(EnvObs)} - {"task_descriptions"}
    request, trajectory = _arrays(ObsRequest), _arrays(Trajectory)
    assert set(of.ARRAYS) == env_fields == set(request)
    for name in of.ARRAYS:
        # Same per-row shape and dtype: B rows in a request, C chunks in a trajectory,
        # one row after the last step.
        assert request[name].shape[0] == "B" and trajectory[name].shape[0] == "C"
        assert request[name].shape[1:] == trajectory[name].shape[1:] == \
            trajectory[of.FINAL[name]].shape
        assert request[name].dtype == trajectory[name].dtype == np.dtype(of.ARRAYS[name]).name
        optional = name not in of.REQUIRED
        assert request[name].optional == trajectory[name].optional == optional
        assert trajectory[of.FINAL[name]].optional


class ManyViewsEnv(SyntheticReachEnv):
    """The synthetic env with a wrist camera and two extra views (shifted main images)."""

    def observe(self, env_ids):
        obs = super().observe(env_ids)
        views = np.stack([obs.main_images, 255 - obs.main_images], axis=1)
        return dataclasses.replace(obs, wrist_images=obs.main_images[:, ::-1].copy(),
                                   extra_view_images=views)


def test_extra_views_reach_the_server_batch_and_the_learner_batch():
    env = ManyViewsEnv(num_envs=2, group_size=2, image_size=16, max_episode_steps=6,
                       agent_speed=0.01, target_radius=0.01)
    seeds = iter(range(100, 200))
    stage = StageExecutor(env, [0], 4, IdSource(0), lambda group: next(seeds),
                          record_final_obs=True)
    seen, episodes = [], []
    while not episodes:
        obs = stage.observe()
        seen.append(obs)
        # Actor -> server: through the codec, then the server's batch of two requests.
        request = of.to_request(obs, 1, False)
        _, got = decode(encode(request, "actor-0", "r", 1))
        served = of.from_requests([got, got])
        np.testing.assert_array_equal(served.extra_view_images,
                                      np.concatenate([obs.extra_view_images] * 2))
        assert served.task_descriptions == obs.task_descriptions * 2
        episodes = stage.execute(np.zeros((len(obs), 8, 7), np.float32),
                                 np.zeros((len(obs), 8, 7), np.float32), None, 0)
    # Actor -> learner: the trajectories through the codec, then the training batch.
    episodes = [decode(encode(ep, "actor-0", "r", 1))[1] for ep in episodes]
    assert all(ep.truncated for ep in episodes)
    batch = build_batch([episodes])
    want = np.concatenate([np.stack([o.extra_view_images[row] for o in seen])
                           for row in range(2)])
    np.testing.assert_array_equal(batch.obs.extra_view_images, want)
    assert batch.obs.wrist_images.shape == (len(want), 16, 16, 3)
    final = of.final_observations(episodes)
    assert final.extra_view_images.shape == (2, 2, 16, 16, 3)
    np.testing.assert_array_equal(final.extra_view_images[:, 1], 255 - final.main_images)
