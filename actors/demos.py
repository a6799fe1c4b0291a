"""Recording demonstrations in the actor: every simulator step of every episode, to disk.

:class:`DemoRecorder` is an executor hook (:class:`actors.executor.EpisodeHook`): it keeps
each running episode's steps (both cameras, the state, the action executed, reward, done,
success, and the simulator's own state and ``env.record_cameras``' views from
:meth:`VectorEnv.record_extras`) and, when the
episode ends, adds every camera's final frame and hands the episode to a
:class:`demos.DemoWriter` thread, which writes it as one LIBERO-layout HDF5 file while the
actor steps on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from typing_extensions import override

from actors.executor import EpisodeHook
from configs import Config, to_dict
from demos import Demo, DemoWriter
from demos.layout import file_attributes
from envs.base import EnvObs, StepResult, VectorEnv, split_init_state


@dataclass
class _Steps:
    """One running episode's steps so far."""

    episode_id: int
    init_state_id: int
    extras_now: dict  # the simulator's extras before the next step
    rows: dict = field(default_factory=dict)
    failed: bool = False  # the simulator failed: no final frame to observe

    def add(self, **row) -> None:
        for key, value in row.items():
            self.rows.setdefault(key, []).append(value)


class DemoRecorder(EpisodeHook):
    """Collects every step of each episode of ``env``; finished episodes go to ``writer``."""

    wants_observations = True

    def __init__(self, env: VectorEnv, writer: DemoWriter, orientation: str, source: str):
        self.env, self.writer = env, writer
        self.orientation, self.source = orientation, source
        self.running: dict[int, _Steps] = {}

    @override
    def on_reset(self, env_id: int, episode_id: int, init_state_id: int) -> None:
        extras = self.env.record_extras(np.array([env_id]))
        self.running[env_id] = _Steps(episode_id, init_state_id,
                                      {k: v[0] for k, v in extras.items()})

    @override
    def on_step(self, env_ids: np.ndarray, obs: Optional[EnvObs], actions: np.ndarray,
                result: StepResult) -> None:
        after = self.env.record_extras(env_ids)
        for row, e in enumerate(env_ids):
            steps = self.running[int(e)]
            steps.add(main=obs.main_images[row], state=obs.states[row], action=actions[row],
                      reward=result.rewards[row], success=result.success[row],
                      done=bool(result.terminated[row] or result.truncated[row]
                                or result.errors[row]),
                      **({"wrist": obs.wrist_images[row]} if obs.wrist_images is not None
                         else {}),
                      **{f"extra:{k}": v for k, v in steps.extras_now.items()})
            steps.extras_now = {k: v[row] for k, v in after.items()}
            steps.failed = bool(result.errors[row])

    @override
    def on_end(self, env_id: int, instruction: str, success: bool) -> None:
        steps = self.running.pop(env_id, None)
        if steps is None or not steps.rows:
            return
        r = {k: np.stack(v) for k, v in steps.rows.items()}
        final, final_views = None, {}  # what the last action led to; none after a failure
        if not steps.failed:
            last = self.env.observe(np.array([env_id]))
            final = last.main_images[0]
            final_views = {k.split(":", 1)[1]: v for k, v in steps.extras_now.items()
                           if k.startswith("view:")}
            if last.wrist_images is not None:
                final_views["wrist"] = last.wrist_images[0]
        extras = {k.split(":", 1)[1]: v for k, v in r.items() if k.startswith("extra:")}
        views = {k.split(":", 1)[1]: extras.pop(k) for k in list(extras)
                 if k.startswith("view:")}  # record_cameras'
        self.writer.put(Demo(
            instruction=instruction, actions=r["action"].astype(np.float32),
            rewards=r["reward"].astype(np.float32), dones=r["done"].astype(bool),
            success=r["success"].astype(bool), main_images=r["main"],
            states=r["state"].astype(np.float32), wrist_images=r.get("wrist"),
            orientation=self.orientation,
            extras=extras, init_state_id=steps.init_state_id,
            task_id=split_init_state(steps.init_state_id)[0], episode_id=steps.episode_id,
            source=self.source, final_main_image=final, views=views,
            final_views=final_views))


def dataset_dir(cfg: Config) -> Path:
    """Where a record run writes its episode files."""
    return Path(cfg.record.dataset_dir or Path(cfg.run.log_dir) / "dataset")


def make_demo_recorder(cfg: Config, env: VectorEnv,
                       source: str | None = None) -> tuple[DemoRecorder, DemoWriter]:
    """The recorder hook and its writer thread for a record run's actor (``source``, the
    files' provenance: by default ``expert`` or ``policy:CHECKPOINT`` from ``record``)."""
    env_args = {"env": to_dict(cfg)["env"], "record": to_dict(cfg)["record"]}

    def attributes(demo: Demo) -> dict:
        info = env.task_info(demo.init_state_id)
        return file_attributes(demo, info["env_name"], env_args, info["problem_name"],
                               info["bddl_file_name"])

    writer = DemoWriter(dataset_dir(cfg), attributes, cfg.record.compression,
                        cfg.record.max_pending)
    source = source or ("expert" if cfg.record.source == "expert" else
                        f"policy:{cfg.model.checkpoint or cfg.model.model_path or 'fresh'}")
    return DemoRecorder(env, writer, env.image_orientation, source), writer
