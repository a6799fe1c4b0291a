"""The scripted-expert contract: closed-loop controllers on privileged simulator state.

An expert solves a task from what the simulator knows and a policy does not (object and
gripper poses), to record demonstrations for behaviour cloning. It keeps one controller
per env slot of a :class:`envs.base.VectorEnv` and is asked for one action per env step
(closed loop), never for a whole chunk: the actor executes a chunk's steps one by one and
asks again before each.

Actions are in the simulator's own convention: 7-D, a 6-D end-effector delta in [-1, 1]
and the gripper (-1 opens, +1 closes) for LIBERO and robosuite; the synthetic task's
first two dims move the agent.
"""

from __future__ import annotations

import abc

import numpy as np


class Expert(abc.ABC):
    """Per-env controllers for the envs of one :class:`VectorEnv`."""

    @abc.abstractmethod
    def reset(self, env_id: int) -> None:
        """The episode of ``env_id`` has just started (after the env's settle steps)."""

    @abc.abstractmethod
    def act(self, env_ids: np.ndarray) -> np.ndarray:
        """The next action of each env of ``env_ids`` from its current state: float32 [B,D]."""
