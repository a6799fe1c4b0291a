"""What does a world model call success? A policy's episodes run closed loop in the
world-model env (the policy sees the generated frames, as in RL), and the frames leading
to each episode's first success, as one image to look at
(``scripts/world_model_frames.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from envs.base import EnvObs
from envs.world_model import WorldModelVectorEnv
from worldmodel.data import split_views


@dataclass
class ClosedLoopEpisode:
    """The frames an episode showed (its reset frame, then every generated one; every
    camera's view side by side) and the index of the first the env called a success
    (None: it never succeeded)."""

    frames: list[np.ndarray]
    first_success: int | None


def closed_loop(env: WorldModelVectorEnv, act: Callable[[EnvObs], np.ndarray],
                state_ids: list[int]) -> list[ClosedLoopEpisode]:
    """One episode per env (``env.group_size`` 1), env e reset to ``state_ids[e]``; ``act``
    maps observations to chunks [B,N,D]; until every episode ended."""
    envs = np.arange(env.num_envs)
    for e, state in zip(envs, state_ids):
        env.reset_group(int(e), state)
    out = [ClosedLoopEpisode([split_views(env.last[e])], None) for e in envs]
    alive = np.ones(env.num_envs, bool)
    while alive.any():
        live = envs[alive]
        ended = np.zeros(len(live), bool)
        for t, res in enumerate(env.step_chunk(live, act(env.observe(live)))):
            for j, e in enumerate(live):
                if ended[j]:
                    continue
                out[e].frames.append(split_views(env.chunk_views[j, t]))
                if res.success[j] and out[e].first_success is None:
                    out[e].first_success = len(out[e].frames) - 1
            ended |= res.terminated | res.truncated
        alive[live[ended]] = False
    return out


def success_grid(episodes: list[ClosedLoopEpisode], before: tuple[int, ...] = (16, 8, 2, 0),
                 rows: int = 8) -> np.ndarray | None:
    """uint8 image: for each of the first ``rows`` successful episodes a row of its frames
    ``before`` steps before its first success (clipped at its start), then its reset
    frame; None when none succeeded."""
    lines = [np.concatenate([ep.frames[max(0, ep.first_success - d)] for d in before]
                            + [ep.frames[0]], axis=1)
             for ep in episodes if ep.first_success is not None][:rows]
    return np.concatenate(lines, axis=0) if lines else None
