"""The environment contract: typed observation batches and a vectorised env with groups.

``EnvObs`` is the observation batch (batch-first); its arrays and their trips to the server
and the learner are listed once, in :mod:`envs.observation_fields`. A :class:`VectorEnv` holds E
envs split into groups of G consecutive envs; ``reset_group`` puts the G envs of a group
into one initial state (GRPO compares episodes that start alike).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

import numpy as np

from configs.schema import EVAL_STATES, INIT_STRIDE  # the initial-state id layout


def split_init_state(init_state_id: int) -> tuple[int, int]:
    """(task index, state index) of an initial-state id."""
    return init_state_id // INIT_STRIDE, init_state_id % INIT_STRIDE


@dataclass(frozen=True)
class EnvObs:
    """A batch of observations.

    main_images: uint8 [B,H,W,3], upright; states: float32 [B,S]; task_descriptions:
    B strings; wrist_images: uint8 [B,H,W,3] or None; extra_view_images: uint8
    [B,V,H,W,3] or None.
    """

    main_images: np.ndarray
    states: np.ndarray
    task_descriptions: list
    wrist_images: Optional[np.ndarray] = None
    extra_view_images: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.task_descriptions)


@dataclass(frozen=True)
class StepResult:
    """What one env step returned for each env stepped (arrays of length B).

    rewards float32; terminated bool (success or failure ends it); truncated bool (step
    limit); success bool (the task is achieved now); errors: '' or why the simulator failed;
    frames: uint8 [B,H,W,3], the main camera after the step, where the env has it at hand
    (a world model generates it), else None (videos then ask :meth:`VectorEnv.frame`).
    """

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    errors: list
    frames: Optional[np.ndarray] = None

    def rows(self, rows: np.ndarray) -> "StepResult":
        """The results of rows ``rows`` only."""
        return StepResult(self.rewards[rows], self.terminated[rows], self.truncated[rows],
                          self.success[rows], [self.errors[i] for i in rows],
                          None if self.frames is None else self.frames[rows])

    def ended(self) -> np.ndarray:
        """bool [B]: the episode ended with this step (terminated, truncated or failed)."""
        return self.terminated | self.truncated | np.array([bool(e) for e in self.errors],
                                                           bool).reshape(-1)


class VectorEnv(abc.ABC):
    """E environments stepped together; envs ``[g*G, (g+1)*G)`` form group ``g``."""

    num_envs: int
    group_size: int
    state_dim: int
    action_dim: int
    max_episode_steps: int
    held_out: bool = False  # training never starts from an evaluation trial's state
    # True: step_chunk is the env's own (a world model generates a chunk's frames in one
    # call) and the executor calls it; False: the executor steps action by action.
    native_chunks: bool = False
    chunk_size: int = 0  # a native step_chunk takes chunks of a multiple of this (0: any)
    image_orientation: str = "upright"  # of the images observe() returns (envs/robot_io.py)

    def sample_init_state(self, group: int, rng: np.random.Generator) -> int:
        """A random training initial-state id for ``group`` (one task by default); with
        ``held_out``, never one of the evaluation trials' (state index >= EVAL_STATES)."""
        return int(rng.integers(EVAL_STATES if self.held_out else 0, INIT_STRIDE))

    def record_extras(self, env_ids: np.ndarray) -> dict:
        """What a demonstration file keeps beside the observation, now, per env: arrays
        [B,...] by LIBERO's dataset names (``states``: the full simulator state,
        ``ee_states``, ``gripper_states``, ``joint_states``...), and ``view:<camera>``
        images [B,H,W,3] of cameras only recordings keep (``Demo.views``). None by
        default."""
        return {}

    def task_info(self, init_state_id: int) -> dict:
        """``env_name``, ``problem_name`` and ``bddl_file_name`` of an initial state's task
        (a demonstration file's attributes)."""
        return {"env_name": type(self).__name__, "problem_name": "", "bddl_file_name": ""}

    def frame(self, env_id: int) -> np.ndarray:
        """The main camera of one env now, uint8 [H,W,3] upright (for videos)."""
        return self.observe(np.array([env_id])).main_images[0]

    @abc.abstractmethod
    def reset_group(self, group: int, init_state_id: int) -> None:
        """Reset every env of ``group`` to the initial state ``init_state_id``."""

    @abc.abstractmethod
    def step(self, env_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        """Apply one action (float32 [B,D]) to each env of ``env_ids`` (int [B])."""

    def step_chunk(self, env_ids: np.ndarray, actions: np.ndarray) -> list[StepResult]:
        """Apply each env's N actions (float32 [B,N,D]) in order; entry t of the list is
        step t's result for every row. An env stops at the step its episode ends: its rows
        of the later entries are empty (reward 0, no flags, no error) and its actions
        there are not applied. The default loops :meth:`step`."""
        b, n = actions.shape[:2]
        done = np.zeros(b, bool)
        out = []
        for t in range(n):
            res = StepResult(np.zeros(b, np.float32), np.zeros(b, bool), np.zeros(b, bool),
                             np.zeros(b, bool), [""] * b)
            live = np.flatnonzero(~done)
            if len(live):
                got = self.step(env_ids[live], actions[live, t])
                for name in ("rewards", "terminated", "truncated", "success"):
                    getattr(res, name)[live] = getattr(got, name)
                for row, k in enumerate(live):
                    res.errors[k] = got.errors[row]
                done[live] |= got.ended()
            out.append(res)
        return out

    @abc.abstractmethod
    def observe(self, env_ids: np.ndarray) -> EnvObs:
        """The current observation of each env of ``env_ids``."""

    def close(self) -> None:
        """Release simulator resources."""


def take(obs: EnvObs, rows: np.ndarray) -> EnvObs:
    """The rows ``rows`` of a batch."""

    def pick(a):
        return None if a is None else a[rows]

    return EnvObs(obs.main_images[rows], obs.states[rows],
                  [obs.task_descriptions[i] for i in rows],
                  pick(obs.wrist_images), pick(obs.extra_view_images))
