"""Environments behind one contract (:mod:`envs.base`), built by :func:`make_env`."""

from configs import EnvConfig
from envs.base import EnvObs, StepResult, VectorEnv, take


def make_env(cfg: EnvConfig, num_envs: int, group_size: int, action_dim: int) -> VectorEnv:
    """The vectorised env named by ``cfg.kind`` with ``num_envs`` envs in groups."""
    if cfg.kind == "synthetic":
        from envs.synthetic import SyntheticReachEnv

        return SyntheticReachEnv(
            num_envs, group_size, image_size=cfg.image_size, num_targets=cfg.num_targets,
            max_episode_steps=cfg.max_episode_steps, target_radius=cfg.target_radius,
            agent_speed=cfg.agent_speed, progress_reward=cfg.progress_reward,
            goal_in_state=cfg.goal_in_state, step_busy_ms=cfg.step_busy_ms,
            step_sleep_ms=cfg.step_sleep_ms, action_dim=action_dim)
    raise ValueError(f"unknown env.kind {cfg.kind!r}; valid: ['synthetic']")


__all__ = ["EnvObs", "StepResult", "VectorEnv", "make_env", "take"]
