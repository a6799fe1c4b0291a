"""Environments behind one contract (:mod:`envs.base`), built by :func:`make_env`.

``synthetic`` is a fast reaching task; ``libero`` and ``robosuite`` are MuJoCo robot
simulators (:mod:`envs.sim`), imported only when asked for; ``world_model`` is a learned
simulator (:mod:`envs.world_model`).
"""

from __future__ import annotations

import logging

from configs import EnvConfig
from envs.base import EnvObs, StepResult, VectorEnv, take

log = logging.getLogger(__name__)
KINDS = ("synthetic", "libero", "robosuite", "world_model")
DEFAULT_MAX_STEPS = {"synthetic": 64, "robosuite": 200, "world_model": 240}


def max_episode_steps(cfg: EnvConfig) -> int:
    """The step limit: the configured one, else the family's (LIBERO: the suite's)."""
    if cfg.max_episode_steps:
        return cfg.max_episode_steps
    if cfg.kind == "libero":
        from envs.libero import MAX_EPISODE_STEPS

        return MAX_EPISODE_STEPS[cfg.libero.suite]
    return DEFAULT_MAX_STEPS[cfg.kind]


def check_env_config(cfg: EnvConfig) -> None:
    """Fail fast on names the simulators do not know, listing the valid ones."""
    if cfg.kind == "libero":
        task_ids(cfg)  # the suite's name, then the task ids
    elif cfg.kind == "robosuite":
        from envs.robosuite_tasks import check_task

        check_task(cfg.robosuite.task)


def task_ids(cfg: EnvConfig) -> list[int]:
    """The task ids a run covers (evaluation iterates over them); one for one-task kinds."""
    if cfg.kind == "libero":
        from envs.libero import LiberoSuite

        return LiberoSuite(cfg.libero.suite).check_task_ids(cfg.libero.task_ids)
    return [0]


def eval_init_states(cfg: EnvConfig, num_trials: int, first_state: int = 0) -> list[int]:
    """Every episode's initial-state id of a fixed plan: episode k of task t starts from
    ``t*1000 + first_state + k`` (evaluation: trial k is state ``eval.first_state`` + k)."""
    from envs.base import INIT_STRIDE

    if first_state + num_trials > INIT_STRIDE:
        raise ValueError(f"initial states {first_state}..{first_state + num_trials - 1} "
                         f"exceed the {INIT_STRIDE} of a task")
    return [t * INIT_STRIDE + first_state + k for t in task_ids(cfg)
            for k in range(num_trials)]


def planned_init_states(cfg) -> list[int]:
    """The initial states a run with a fixed plan runs once each, in task order: record
    (``record.episodes_per_task`` from ``record.first_state``) or eval (the trials)."""
    if cfg.run.mode == "record":
        return eval_init_states(cfg.env, cfg.record.episodes_per_task, cfg.record.first_state)
    return eval_init_states(cfg.env, cfg.eval.num_trials, cfg.eval.first_state)


def image_orientation(cfg: EnvConfig) -> str:
    """The orientation of the images the policy sees: ``env.image_orientation``, with auto
    resolved (libero for LIBERO, upright otherwise; a world model of LIBERO sets it)."""
    if cfg.image_orientation != "auto":
        return cfg.image_orientation
    return "libero" if cfg.kind == "libero" else "upright"


def prepare_rendering(cfg: EnvConfig) -> str:
    """Choose the GL backend before MuJoCo is imported (simulator kinds, and a world model
    whose predicted states the simulator draws)."""
    if cfg.kind == "synthetic":
        return "none"
    if cfg.kind == "world_model":
        from envs.world_model import uses_simulator

        wm = cfg.world_model
        if not uses_simulator(wm.judge, wm.frames, wm.proprio):
            return "none"
    from envs.render import select_gl_backend

    return select_gl_backend(cfg.render_backend)


def make_env(cfg: EnvConfig, num_envs: int, group_size: int, action_dim: int,
             group_offset: int = 0) -> VectorEnv:
    """The vectorised env named by ``cfg.kind`` with ``num_envs`` envs in groups.

    ``group_offset`` (this actor's first global group) spreads LIBERO tasks over actors.
    """
    steps = max_episode_steps(cfg)
    if cfg.kind == "synthetic":
        from envs.synthetic import SyntheticReachEnv

        syn = cfg.synthetic
        return SyntheticReachEnv(
            num_envs, group_size, image_size=cfg.image_size, num_targets=syn.num_targets,
            max_episode_steps=steps, target_radius=syn.target_radius,
            agent_speed=syn.agent_speed, progress_reward=syn.progress_reward,
            goal_in_state=syn.goal_in_state, step_busy_ms=syn.step_busy_ms,
            step_sleep_ms=syn.step_sleep_ms, action_dim=action_dim,
            held_out=cfg.held_out_eval_states)
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown env.kind {cfg.kind!r}; valid: {list(KINDS)}")
    if cfg.kind == "world_model":
        from envs.world_model import make_world_model_env

        return make_world_model_env(cfg, num_envs, group_size, action_dim, steps)
    if action_dim != 7:
        raise ValueError(f"{cfg.kind} takes 7-D actions; set model.action_dim=7")
    backend = prepare_rendering(cfg)
    log.info("rendering with MUJOCO_GL=%s%s", backend, " (fast)" if cfg.fast_render else "")
    from envs.sim import SimOptions

    orientation = image_orientation(cfg)
    opts = SimOptions(image_size=cfg.image_size, max_episode_steps=steps,
                      state_dim=cfg.state_dim, wrist_camera=cfg.wrist_camera,
                      fast_render=cfg.fast_render, orientation=orientation,
                      gripper_convention=cfg.gripper_convention,
                      settle_steps=cfg.settle_steps,
                      success_hold_steps=cfg.success_hold_steps,
                      record_cameras=tuple(cfg.record_cameras))
    if cfg.kind == "libero":
        from envs.libero import LiberoVectorEnv

        lib = cfg.libero
        return LiberoVectorEnv(num_envs, group_size, opts, lib.suite, lib.task_ids,
                               lib.task_assignment, group_offset, cfg.held_out_eval_states)
    from envs.robosuite_tasks import RobosuiteVectorEnv

    return RobosuiteVectorEnv(num_envs, group_size, opts, cfg.robosuite.task,
                              cfg.held_out_eval_states)


__all__ = ["EnvObs", "StepResult", "VectorEnv", "check_env_config", "eval_init_states",
           "image_orientation", "make_env", "planned_init_states",
           "max_episode_steps", "prepare_rendering", "take", "task_ids"]
