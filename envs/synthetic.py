"""A fast synthetic reaching task with the full observation contract.

The arena is the unit square, drawn as an RGB image: coloured square targets and the
agent (a white square). The instruction names one target ("move to the red square").
Actions are 7-D like a robot arm's; dims 0 and 1 move the agent by ``agent_speed`` times
their value (clipped to [-1,1]); the others are ignored. Reward 1 and termination on
reaching the named target (plus, optionally, ``progress_reward`` per unit of distance
closed toward it), truncation at ``max_episode_steps``. State (8-D, like LIBERO's):
agent x, y, the named target's x, y when ``goal_in_state`` (else 0, 0), last move dx, dy,
elapsed fraction of the step limit, 0. With the goal in the state (as gym's FetchReach
gives its desired goal) the small CPU policy learns the task in a minute or two; without
it the task is pure vision-language grounding, which that policy learns far more slowly.
A configurable per-step CPU busy time and sleep stand in for a costly simulator.
"""

from __future__ import annotations

import time

import numpy as np
from typing_extensions import override

from envs.base import EVAL_STATES, EnvObs, StepResult, VectorEnv

COLOURS = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235),
    "yellow": (235, 215, 40), "magenta": (220, 50, 220), "cyan": (40, 210, 220),
}
BACKGROUND = (30, 30, 30)
STATE_DIM = 8


class SyntheticReachEnv(VectorEnv):
    """E reaching envs; a group's envs share targets, goal and agent start."""

    def __init__(self, num_envs: int, group_size: int, image_size: int = 224,
                 num_targets: int = 3, max_episode_steps: int = 64,
                 target_radius: float = 0.12, agent_speed: float = 0.05,
                 progress_reward: float = 0.0, goal_in_state: bool = False,
                 step_busy_ms: float = 0.0, step_sleep_ms: float = 0.0, action_dim: int = 7,
                 held_out: bool = False):
        if num_envs % group_size:
            raise ValueError(f"num_envs {num_envs} is not a multiple of group_size "
                             f"{group_size}")
        if not 1 <= num_targets <= len(COLOURS):
            raise ValueError(f"num_targets must be in 1..{len(COLOURS)}")
        self.num_envs, self.group_size = num_envs, group_size
        self.state_dim, self.action_dim = STATE_DIM, action_dim
        self.max_episode_steps = max_episode_steps
        self.size, self.num_targets = image_size, num_targets
        self.radius, self.speed = target_radius, agent_speed
        self.progress_reward, self.goal_in_state = progress_reward, goal_in_state
        self.busy_s, self.sleep_s = step_busy_ms / 1e3, step_sleep_ms / 1e3
        self.agent = np.full((num_envs, 2), 0.5, np.float32)
        self.last_move = np.zeros((num_envs, 2), np.float32)
        self.targets = np.zeros((num_envs, num_targets, 2), np.float32)
        self.colours = np.zeros((num_envs, num_targets), np.int64)
        self.goal = np.zeros(num_envs, np.int64)
        self.steps = np.zeros(num_envs, np.int64)
        self.names = list(COLOURS)
        self.held_out = held_out

    @override
    def sample_init_state(self, group: int, rng: np.random.Generator) -> int:
        # Any integer seeds a layout: training draws from 2**31 of them (held out: none
        # of the evaluation trials' seeds, 0..EVAL_STATES-1).
        return int(rng.integers(EVAL_STATES if self.held_out else 0, 2**31))

    @override
    def reset_group(self, group: int, init_state_id: int) -> None:
        rng = np.random.default_rng(init_state_id)
        rows = slice(group * self.group_size, (group + 1) * self.group_size)
        colours = rng.choice(len(COLOURS), self.num_targets, replace=False)
        # Targets at least 2.5 radii apart and away from the walls, so each is reachable.
        targets = []
        while len(targets) < self.num_targets:
            p = rng.uniform(0.15, 0.85, 2)
            if all(np.linalg.norm(p - q) > 2.5 * self.radius for q in targets):
                targets.append(p)
        targets = np.array(targets, np.float32)
        start = rng.uniform(0.3, 0.7, 2).astype(np.float32)
        while np.min(np.linalg.norm(targets - start, axis=1)) < 1.5 * self.radius:
            start = rng.uniform(0.2, 0.8, 2).astype(np.float32)
        self.targets[rows], self.colours[rows] = targets, colours
        self.goal[rows] = rng.integers(self.num_targets)
        self.agent[rows], self.last_move[rows], self.steps[rows] = start, 0.0, 0

    @override
    def step(self, env_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        self._spend_cost(len(env_ids))
        move = np.clip(actions[:, :2], -1.0, 1.0).astype(np.float32) * self.speed
        goal_pos = self.targets[env_ids, self.goal[env_ids]]
        before = np.linalg.norm(self.agent[env_ids] - goal_pos, axis=1)
        self.agent[env_ids] = np.clip(self.agent[env_ids] + move, 0.0, 1.0)
        self.last_move[env_ids] = move
        self.steps[env_ids] += 1
        after = np.linalg.norm(self.agent[env_ids] - goal_pos, axis=1)
        success = after < self.radius
        truncated = ~success & (self.steps[env_ids] >= self.max_episode_steps)
        rewards = success + self.progress_reward * (before - after)
        return StepResult(rewards.astype(np.float32), success.copy(), truncated, success,
                          [""] * len(env_ids))

    @override
    def observe(self, env_ids: np.ndarray) -> EnvObs:
        images = np.empty((len(env_ids), self.size, self.size, 3), np.uint8)
        for row, e in enumerate(env_ids):
            images[row] = self._render(e)
        states = np.zeros((len(env_ids), STATE_DIM), np.float32)
        states[:, :2] = self.agent[env_ids]
        if self.goal_in_state:
            states[:, 2:4] = self.targets[env_ids, self.goal[env_ids]]
        states[:, 4:6] = self.last_move[env_ids] / self.speed
        states[:, 6] = self.steps[env_ids] / self.max_episode_steps
        texts = [f"move to the {self.names[self.colours[e, self.goal[e]]]} square"
                 for e in env_ids]
        return EnvObs(images, states, texts)

    def _render(self, e: int) -> np.ndarray:
        img = np.empty((self.size, self.size, 3), np.uint8)
        img[:] = BACKGROUND
        half = max(1, int(self.radius * self.size * 0.6))
        for k in range(self.num_targets):
            self._square(img, self.targets[e, k], half, COLOURS[self.names[self.colours[e, k]]])
        self._square(img, self.agent[e], max(1, half // 2), (255, 255, 255))
        return img

    def _square(self, img: np.ndarray, pos: np.ndarray, half: int, colour) -> None:
        # Image rows grow downwards; y grows upwards, so the picture is upright.
        cx, cy = int(pos[0] * (self.size - 1)), int((1.0 - pos[1]) * (self.size - 1))
        img[max(0, cy - half):cy + half + 1, max(0, cx - half):cx + half + 1] = colour

    def _spend_cost(self, n: int) -> None:
        if self.busy_s:
            end = time.perf_counter() + self.busy_s * n
            while time.perf_counter() < end:
                pass
        if self.sleep_s:
            time.sleep(self.sleep_s * n)
