"""The one owner of the observation fields and their trips: EnvObs -> ObsRequest ->
EnvObs (the server's batch), and EnvObs rows -> Trajectory -> EnvObs (the learner's batch).

An :class:`~envs.base.EnvObs` carries per-row arrays (``ARRAYS``) and the task
descriptions. ``ObsRequest`` and ``Trajectory`` carry the same arrays under the same names
(a request one row per env, a trajectory one row per chunk), and a truncated trajectory
the observation after its last step under ``FINAL[name]``. A view added to ``ARRAYS`` (and
declared in the messages) reaches the server and the learner with no other change;
``tests/test_observation_fields.py`` holds the messages to this list.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from envs.base import EnvObs
from protocol.messages import ObsRequest, Trajectory

# name -> dtype of every per-row array of an observation, required ones first.
ARRAYS = {"main_images": np.uint8, "states": np.float32, "wrist_images": np.uint8,
          "extra_view_images": np.uint8}
REQUIRED = ("main_images", "states")
# The Trajectory field that holds each array of the observation after the last step.
FINAL = {"main_images": "final_main_image", "states": "final_state",
         "wrist_images": "final_wrist_image", "extra_view_images": "final_extra_view_images"}


def _arrays(obs) -> dict:
    return {name: getattr(obs, name) for name in ARRAYS}


def to_request(obs: EnvObs, request_id: int, deterministic: bool) -> ObsRequest:
    """The request an actor sends for ``obs``."""
    return ObsRequest(request_id=request_id, deterministic=deterministic,
                      task_descriptions=list(obs.task_descriptions), **_arrays(obs))


def batch_key(request: ObsRequest) -> tuple:
    """Per-row shapes of every array (None when absent): requests with equal keys can
    share a forward pass."""
    return tuple(None if a is None else a.shape[1:] for a in _arrays(request).values())


def _concat(parts: Sequence, descriptions: list, fields: Optional[dict] = None,
            join=np.concatenate) -> EnvObs:
    """One batch from ``parts``: each array ``fields[name]`` (default: ``name``) of every
    part joined by ``join``; absent (None) when the first part lacks it."""
    arrays = {}
    for name in ARRAYS:
        values = [getattr(p, (fields or {}).get(name, name)) for p in parts]
        arrays[name] = None if values[0] is None else join(values)
    return EnvObs(task_descriptions=descriptions, **arrays)


def from_requests(requests: Sequence[ObsRequest]) -> EnvObs:
    """The observations of ``requests`` as one batch, rows in request order (requests of
    one :func:`batch_key`)."""
    return _concat(requests, [t for r in requests for t in r.task_descriptions])


def row(obs: EnvObs, index: int) -> dict:
    """Row ``index`` of every array present: one chunk's observation in a trajectory."""
    return {name: a[index] for name, a in _arrays(obs).items() if a is not None}


def stacked(rows: dict) -> dict:
    """A trajectory's observation fields from its rows (:func:`row` per chunk, appended
    to lists by name); an optional view never seen is absent (None)."""
    return {name: np.stack(rows[name]).astype(dtype, copy=False) if name in rows else None
            for name, dtype in ARRAYS.items()}


def final_fields(obs: Optional[EnvObs]) -> dict:
    """The Trajectory's ``final_*`` fields from a one-row observation (None: all absent)."""
    if obs is None:
        return {}
    return {FINAL[name]: None if a is None else a[0] for name, a in _arrays(obs).items()}


def from_trajectories(episodes: Sequence[Trajectory]) -> EnvObs:
    """Every chunk's observation of ``episodes`` as one batch, episode after episode."""
    return _concat(episodes, [ep.task_description for ep in episodes
                              for _ in range(len(ep.actions))])


def final_observations(episodes: Sequence[Trajectory]) -> EnvObs:
    """The observation after the last step of each of ``episodes`` (all truncated with
    their ``final_*`` fields) as one batch."""
    return _concat(episodes, [ep.task_description for ep in episodes], FINAL, np.stack)
