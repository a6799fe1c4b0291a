"""Scripted experts (:mod:`experts.base`), chosen by :func:`make_expert` from the env config."""

from __future__ import annotations

from configs import EnvConfig
from envs.base import VectorEnv
from experts.base import Expert


def make_expert(cfg: EnvConfig, env: VectorEnv) -> Expert:
    """The expert of ``cfg``'s task, driving the envs of ``env``; an env family or task
    without one fails naming those that have one."""
    if cfg.kind == "synthetic":
        from experts.synthetic import ReachExpert

        return ReachExpert(env)
    if cfg.kind == "robosuite":
        from experts.robosuite_experts import robosuite_expert

        return robosuite_expert(env, cfg.robosuite.task)
    if cfg.kind == "libero":
        from experts.libero_experts import libero_expert

        return libero_expert(env, cfg.libero.suite)
    raise ValueError(f"no scripted expert for env.kind={cfg.kind!r}; experts exist for: "
                     "synthetic, robosuite, libero")


__all__ = ["Expert", "make_expert"]
