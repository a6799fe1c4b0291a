"""The synthetic reaching task's expert: head straight for the named target."""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from envs.synthetic import SyntheticReachEnv
from experts.base import Expert


class ReachExpert(Expert):
    """Moves at full speed toward the named target (proportional, saturating)."""

    def __init__(self, env: SyntheticReachEnv, gain: float = 1.0):
        self.env, self.gain = env, gain

    @override
    def reset(self, env_id: int) -> None:
        pass  # stateless: the action is a function of the current positions

    @override
    def act(self, env_ids: np.ndarray) -> np.ndarray:
        env = self.env
        goal = env.targets[env_ids, env.goal[env_ids]]
        # Full speed until within a step of the goal: error / speed is the steps left.
        move = np.clip(self.gain * (goal - env.agent[env_ids]) / env.speed, -1.0, 1.0)
        actions = np.zeros((len(env_ids), env.action_dim), np.float32)
        actions[:, :2] = move
        return actions
