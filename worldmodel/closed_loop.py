"""What does a world model call success? A policy's episodes run closed loop in the
world-model env (the policy sees the generated frames, as in RL), the frames leading
to each episode's first success, as one image to look at
(``scripts/world_model_frames.py``), and the same actions replayed in another env (the
real one: ``benchmarks/bench_reward_agreement.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from envs.base import EnvObs, VectorEnv
from envs.world_model import WorldModelVectorEnv
from worldmodel.data import split_views

if TYPE_CHECKING:
    from actors.executor import EpisodeHook


@dataclass
class ClosedLoopEpisode:
    """The frames an episode showed (its reset frame, then every generated one; every
    camera's view side by side), the index of the first the env called a success
    (None: it never succeeded), the actions it took (float [len(frames) - 1, D]), and its
    return (the sum of its rewards: what GRPO's advantages are computed from)."""

    frames: list[np.ndarray]
    first_success: int | None
    actions: np.ndarray | None = None
    ret: float = 0.0


def policy_act(cfg, checkpoint: str, deterministic: bool) -> Callable[[EnvObs], np.ndarray]:
    """The policy of ``cfg.model`` with ``checkpoint``'s weights, on the CPU, as
    :func:`closed_loop`'s ``act``: observations -> the first ``actions_per_chunk`` actions
    of its chunks [B,N,D], deterministic or sampled at ``inference.temperature``."""
    import torch

    from models import build_policy, load_checkpoint

    policy = build_policy(cfg.model)
    load_checkpoint(policy, checkpoint, cfg.model)
    policy.eval()

    def act(obs: EnvObs) -> np.ndarray:
        with torch.no_grad():
            out = policy.act(policy.prepare(obs, torch.device("cpu")), deterministic,
                             cfg.inference.temperature)
        return out.actions[:, :cfg.actions_per_chunk].numpy()

    return act


def closed_loop(env: WorldModelVectorEnv, act: Callable[[EnvObs], np.ndarray],
                state_ids: list[int]) -> list[ClosedLoopEpisode]:
    """One episode per env (``env.group_size`` 1), env e reset to ``state_ids[e]``; ``act``
    maps observations to chunks [B,N,D]; until every episode ended."""
    envs = np.arange(env.num_envs)
    for e, state in zip(envs, state_ids):
        env.reset_group(int(e), state)
    out = [ClosedLoopEpisode([split_views(env.last[e])], None) for e in envs]
    chunks: list[list[np.ndarray]] = [[] for _ in envs]
    alive = np.ones(env.num_envs, bool)
    while alive.any():
        live = envs[alive]
        ended = np.zeros(len(live), bool)
        actions = act(env.observe(live))
        for j, e in enumerate(live):
            chunks[e].append(actions[j])
        for t, res in enumerate(env.step_chunk(live, actions)):
            for j, e in enumerate(live):
                if ended[j]:
                    continue
                out[e].frames.append(split_views(env.chunk_views[j, t]))
                out[e].ret += float(res.rewards[j])
                if res.success[j] and out[e].first_success is None:
                    out[e].first_success = len(out[e].frames) - 1
            ended |= res.terminated | res.truncated
        alive[live[ended]] = False
    for ep, taken in zip(out, chunks):
        ep.actions = np.concatenate(taken)[:len(ep.frames) - 1]
    return out


def replay(env: VectorEnv, init_state_ids: list[int], actions: list[np.ndarray],
           hook: EpisodeHook | None = None) -> np.ndarray:
    """bool [E]: whether episode e, ``actions[e]`` (float [L_e, D]) from initial state
    ``init_state_ids[e]``, succeeds at some step in ``env`` (group size 1), open loop: the
    actions as they were, whatever the env shows. ``env.num_envs`` episodes at a time.
    ``hook`` (e.g. :class:`actors.demos.DemoRecorder`, which writes each replay as a
    recording) follows every episode, episode e under id e."""
    won = np.zeros(len(actions), bool)
    for first in range(0, len(actions), env.num_envs):
        batch = list(range(first, min(first + env.num_envs, len(actions))))
        instructions = []
        for slot, e in enumerate(batch):
            env.reset_group(slot, init_state_ids[e])
            if hook is not None:
                hook.on_reset(slot, e, init_state_ids[e])
                instructions.append(env.observe(np.array([slot])).task_descriptions[0])
        lengths = np.array([len(actions[e]) for e in batch])
        alive = np.ones(len(batch), bool)
        for t in range(lengths.max()):
            alive &= t < lengths
            rows = np.flatnonzero(alive)
            if not len(rows):
                break
            step = np.stack([actions[batch[r]][t] for r in rows])
            seen = env.observe(rows) if hook is not None and hook.wants_observations else None
            res = env.step(rows, step)
            if hook is not None:
                hook.on_step(rows, seen, step, res)
            for r, ok, end in zip(rows, res.success, res.terminated | res.truncated):
                won[batch[r]] |= bool(ok)
                alive[r] &= not end
        if hook is not None:
            for slot, e in enumerate(batch):
                hook.on_end(slot, instructions[slot], bool(won[e]))
    return won


def success_grid(episodes: list[ClosedLoopEpisode], before: tuple[int, ...] = (16, 8, 2, 0),
                 rows: int = 8) -> np.ndarray | None:
    """uint8 image: for each of the first ``rows`` successful episodes a row of its frames
    ``before`` steps before its first success (clipped at its start), then its reset
    frame; None when none succeeded."""
    lines = [np.concatenate([ep.frames[max(0, ep.first_success - d)] for d in before]
                            + [ep.frames[0]], axis=1)
             for ep in episodes if ep.first_success is not None][:rows]
    return np.concatenate(lines, axis=0) if lines else None
