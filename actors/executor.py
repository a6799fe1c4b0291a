"""The actor's pure core: run action chunks on a stage of envs and record episodes.

A stage owns whole GRPO groups. Each chunk [T,D] is executed for its first N actions
(receding horizon), stopping early for an env whose episode ends. One record per chunk:
the observation the policy saw, the whole sampled chunk with its log-probs, the policy
version, the reward summed over executed actions, done, and how many actions ran.
An env whose episode has ended waits until its whole group has ended; then the group
is reset to a fresh shared initial state and its episodes are emitted together. When
``next_init_state`` has no more states for a group (evaluation's fixed list of trials),
the group retires; a stage whose groups have all retired is ``idle``.

Hooks (videos, demonstration recording) see every reset, every simulator step -- with the
observation before it when they ask for one -- and every episode's end. With an
``expert`` (recording demonstrations), the chunk is not given: the expert chooses each of
its N actions from the state just before it (closed loop). ``action_noise`` adds Gaussian
noise to the arm dims of every executed action. An env with ``native_chunks`` (a world
model) runs the N actions in one ``step_chunk`` call; its per-step results then reach the
hooks as if stepped one by one (no observation before each step, frames in the results).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from envs import observation_fields
from envs.base import EnvObs, StepResult, VectorEnv, take
from protocol.ids import IdSource
from protocol.messages import Trajectory

log = logging.getLogger(__name__)
RESET_ATTEMPTS = 3


class EpisodeHook(Protocol):
    """What follows episodes as they run (:mod:`actors.recorder`, :mod:`actors.demos`)."""

    wants_observations: bool  # on_step gets the observation before each step

    def on_reset(self, env_id: int, episode_id: int, init_state_id: int) -> None:
        """A new episode ``episode_id`` starts in ``env_id``, from ``init_state_id``."""

    def on_step(self, env_ids: np.ndarray, obs: Optional[EnvObs], actions: np.ndarray,
                result: StepResult) -> None:
        """The envs of ``env_ids`` just stepped with ``actions``; ``obs``: the observation
        before the step when a hook ``wants_observations``, else None."""

    def on_end(self, env_id: int, instruction: str, success: bool) -> None:
        """The episode in ``env_id`` ended; ``success``: whether it achieved the task."""


@dataclass
class EpisodeRecord:
    """An episode in progress: per-chunk rows and running totals."""

    episode_id: int
    group_id: int
    init_state_id: int
    task_description: str = ""
    rows: dict = field(default_factory=dict)
    env_steps: int = 0
    episode_return: float = 0.0
    success_once: bool = False
    truncated: bool = False
    env_error: str = ""
    finished: bool = False
    final_obs: Optional[EnvObs] = None  # one row: where a truncated episode stopped

    def append(self, **row) -> None:
        """Add one chunk's row: each keyword's value goes on its column's list."""
        for key, value in row.items():
            self.rows.setdefault(key, []).append(value)

    def to_message(self, group_size: int) -> Trajectory:
        """The finished episode as a Trajectory message, its rows stacked into arrays."""

        def stack(k, dtype):
            return np.stack(self.rows[k]).astype(dtype, copy=False)

        values = self.rows.get("values")
        return Trajectory(
            episode_id=self.episode_id, group_id=self.group_id, group_size=group_size,
            init_state_id=self.init_state_id, task_description=self.task_description,
            env_steps=self.env_steps, episode_return=float(self.episode_return),
            success_once=self.success_once, truncated=self.truncated,
            env_error=self.env_error, actions=stack("actions", np.float32),
            logprobs=stack("logprobs", np.float32),
            policy_versions=stack("policy_versions", np.int64),
            rewards=stack("rewards", np.float32), dones=stack("dones", bool),
            executed=stack("executed", np.int32),
            action_rewards=stack("action_rewards", np.float32),
            values=None if values is None or values[0] is None
            else stack("values", np.float32),
            **observation_fields.stacked(self.rows),
            **observation_fields.final_fields(self.final_obs))


def finite_rewards(res: StepResult) -> StepResult:
    """``res`` with a non-finite reward turned into a simulator error (reward 0): the
    episode ends there and its group is not trained on, as after any simulator failure,
    and NaN never reaches the learner."""
    bad = ~np.isfinite(res.rewards)
    if not bad.any():
        return res
    return dataclasses.replace(
        res, rewards=np.where(bad, 0.0, res.rewards).astype(np.float32),
        errors=[e or ("the env returned a non-finite reward" if b else "")
                for e, b in zip(res.errors, bad)])


class StageExecutor:
    """One pipeline stage: the envs of ``groups`` stepped together, chunk by chunk."""

    def __init__(self, env: VectorEnv, groups: list[int], actions_per_chunk: int,
                 ids: IdSource, next_init_state: Callable[[int], Optional[int]],
                 hooks: tuple = (), resample_failed_resets: bool = True,
                 record_final_obs: bool = False, expert=None, action_noise: float = 0.0,
                 seed: int = 0):
        self.env, self.groups, self.n = env, groups, actions_per_chunk
        self.hooks = tuple(hooks)
        self.want_obs = any(h.wants_observations for h in self.hooks)
        if env.native_chunks and (expert is not None or self.want_obs):
            raise ValueError(f"{type(env).__name__} steps whole chunks: an expert or a "
                             "demonstration recorder needs a simulator stepped action by "
                             "action (record the real simulator)")
        self.expert, self.action_noise = expert, action_noise
        self.noise_rng = np.random.default_rng(seed)
        # PPO bootstraps truncated episodes from V(final state): observe it before reset.
        self.record_final_obs = record_final_obs
        # Training may start a group elsewhere when a reset fails; evaluation may not
        # (each trial's initial state is fixed), so there the failure propagates.
        self.resample_failed_resets = resample_failed_resets
        self.g = env.group_size
        self.ids, self.next_init_state = ids, next_init_state
        self.env_ids = np.concatenate([np.arange(k * self.g, (k + 1) * self.g) for k in groups])
        self.records: dict[int, EpisodeRecord] = {}
        self.retired: set[int] = set()
        self.env_steps = 0
        self._inflight: Optional[tuple[np.ndarray, EnvObs]] = None
        for k in groups:
            self._reset_group(k)

    @property
    def idle(self) -> bool:
        """Every group has retired: nothing left to run."""
        return len(self.retired) == len(self.groups)

    def _reset_group(self, group: int) -> None:
        init_state = self.next_init_state(group)
        envs = range(group * self.g, (group + 1) * self.g)
        if init_state is None:
            self.retired.add(group)
            for e in envs:
                self.records[e] = EpisodeRecord(-1, -1, -1, finished=True)
            return
        for attempt in range(RESET_ATTEMPTS):
            try:
                self.env.reset_group(group, init_state)
                break
            except RuntimeError as err:  # the env already retried with a rebuilt simulator
                if not self.resample_failed_resets or attempt == RESET_ATTEMPTS - 1:
                    raise
                log.warning("group %d: %s; trying another initial state", group, err)
                init_state = self.next_init_state(group)
        gid = self.ids.group()
        for e in envs:
            self.records[e] = EpisodeRecord(self.ids.episode(), gid, init_state)
            if self.expert is not None:
                self.expert.reset(e)
            for hook in self.hooks:
                hook.on_reset(e, self.records[e].episode_id, init_state)

    def observe(self) -> EnvObs:
        """Observations of this stage's live envs, to send to the policy."""
        live = np.array([e for e in self.env_ids if not self.records[e].finished])
        obs = self.env.observe(live)
        self._inflight = (live, obs)
        return obs

    def execute(self, actions: Optional[np.ndarray], logprobs: Optional[np.ndarray],
                values: Optional[np.ndarray], version: int) -> list[Trajectory]:
        """Run the first N actions of each chunk (rows match the last ``observe``); with
        an expert, ``actions`` and ``logprobs`` are None: the expert fills the chunk."""
        ids, obs = self._inflight
        self._inflight = None
        b = len(ids)
        if self.expert is not None:
            actions = np.zeros((b, self.n, self.env.action_dim), np.float32)
            logprobs = np.zeros_like(actions)
        reward, executed = np.zeros(b, np.float64), np.zeros(b, np.int32)
        action_rewards = np.zeros((b, actions.shape[1]), np.float32)
        done = np.zeros(b, bool)
        planned, chunk = None, None
        if self.env.native_chunks:  # one call for the chunk (a world model's frames)
            d = actions.shape[2]
            planned = self._perturb(actions[:, :self.n].reshape(-1, d)).reshape(b, self.n, d)
            chunk = self.env.step_chunk(ids, planned)
        for t in range(self.n):
            live = np.flatnonzero(~done)
            if not len(live):
                break
            stepping = ids[live]
            seen = None
            if chunk is not None:
                executed_actions = planned[live, t]
                res = finite_rewards(chunk[t].rows(live))
            else:
                if self.want_obs:  # the chunk's first observation was just rendered
                    seen = take(obs, live) if t == 0 else self.env.observe(stepping)
                if self.expert is not None:
                    actions[live, t] = self.expert.act(stepping)
                executed_actions = self._perturb(actions[live, t])
                res = finite_rewards(self.env.step(stepping, executed_actions))
            self.env_steps += len(live)
            for hook in self.hooks:
                hook.on_step(stepping, seen, executed_actions, res)
            reward[live] += res.rewards
            action_rewards[live, t] = res.rewards
            executed[live] += 1
            for row, k in enumerate(live):
                rec = self.records[ids[k]]
                rec.success_once |= bool(res.success[row])
                rec.truncated = bool(res.truncated[row])
                rec.env_error = res.errors[row]
                if res.terminated[row] or res.truncated[row] or res.errors[row]:
                    done[k] = True
        for row, e in enumerate(ids):
            rec = self.records[e]
            rec.task_description = obs.task_descriptions[row]
            rec.append(actions=actions[row], logprobs=logprobs[row],
                       values=None if values is None else values[row],
                       policy_versions=version, rewards=reward[row], dones=done[row],
                       executed=executed[row], action_rewards=action_rewards[row],
                       **observation_fields.row(obs, row))
            rec.env_steps += int(executed[row])
            rec.episode_return += float(reward[row])
            rec.finished = bool(done[row])
        if self.record_final_obs:
            self._observe_final_states(ids[done])
        return self._emit_finished_groups()

    def _perturb(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` [B,D] plus Gaussian noise of std ``action_noise`` on the arm dims
        (all but the last, the gripper), clipped to the action bounds."""
        if not self.action_noise:
            return actions
        noisy = np.array(actions, np.float32, copy=True)
        noisy[:, :-1] += self.noise_rng.normal(0.0, self.action_noise, noisy[:, :-1].shape)
        return np.clip(noisy, -1.0, 1.0)

    def _observe_final_states(self, ended: np.ndarray) -> None:
        """Keep where each truncated episode of ``ended`` stopped (one observe call)."""
        truncated = np.array([e for e in ended if self.records[e].truncated and
                              not self.records[e].env_error], dtype=np.int64)
        if len(truncated):
            obs = self.env.observe(truncated)
            for row, e in enumerate(truncated):
                self.records[e].final_obs = take(obs, np.array([row]))

    def _emit_finished_groups(self) -> list[Trajectory]:
        out = []
        for k in self.groups:
            envs = range(k * self.g, (k + 1) * self.g)
            if k not in self.retired and all(self.records[e].finished for e in envs):
                out.extend(self.records[e].to_message(self.g) for e in envs)
                for e in envs:
                    rec = self.records[e]
                    for hook in self.hooks:
                        try:
                            hook.on_end(e, rec.task_description, rec.success_once)
                        except (OSError, ValueError, RuntimeError) as err:  # disk, ffmpeg
                            log.error("%s of episode %d failed: %s", type(hook).__name__,
                                      rec.episode_id, err)
                self._reset_group(k)
        return out
