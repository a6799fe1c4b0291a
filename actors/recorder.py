"""Which episodes an actor films, and the filming: one frame per env step, one mp4 each.

Training episodes: every ``video.train_every``-th of this actor. Evaluation episodes: the
first ``video.eval_per_task`` trials of each task. Files go to ``log_dir/videos/train``
and ``log_dir/videos/eval``; each path is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from actors.video import EpisodeVideo, VideoSampler
from configs import Config
from envs.base import VectorEnv, split_init_state

log = logging.getLogger(__name__)


class EpisodeRecorder:
    """Films chosen episodes of one actor's envs; the executor calls its three hooks."""

    wants_observations = False  # it renders its own frame, one camera, after each step

    def __init__(self, cfg: Config, env: VectorEnv, actor_index: int):
        v = cfg.video
        self.env, self.actor_index, self.cfg = env, actor_index, v
        self.eval = cfg.run.mode == "eval"
        self.first_state = cfg.eval.first_state  # trial k starts from state first_state + k
        self.sampler = VideoSampler(v.train_every, v.eval_per_task)
        self.folder = Path(cfg.run.log_dir) / "videos" / ("eval" if self.eval else "train")
        self.videos: dict[int, tuple[EpisodeVideo, str]] = {}  # env id -> video, file stem
        self.episodes = 0

    def on_reset(self, env_id: int, episode_id: int, init_state_id: int) -> None:
        """A new episode starts in ``env_id``: film it if it is chosen."""
        self.videos.pop(env_id, None)
        if self.eval:
            task, state = split_init_state(init_state_id)
            trial = state - self.first_state
            chosen, stem = self.sampler.want_eval(task, trial), f"task{task:03d}_trial{trial:03d}"
        else:
            chosen = self.sampler.want_train(self.episodes)
            stem = f"actor{self.actor_index}_episode{episode_id & 0xFFFFFFFF:07d}"
        self.episodes += 1
        if chosen:
            video = EpisodeVideo("", self.cfg.fps, self.cfg.max_frames)
            video.add(self.env.frame(env_id))
            self.videos[env_id] = (video, stem)

    def on_step(self, env_ids, obs=None, actions=None, result=None) -> None:
        """The envs of ``env_ids`` have just stepped."""
        for row, e in enumerate(env_ids):
            if int(e) in self.videos:
                frames = None if result is None else result.frames
                self.videos[int(e)][0].add(self.env.frame(int(e)) if frames is None
                                           else frames[row])

    def on_end(self, env_id: int, instruction: str, success: bool) -> None:
        """The episode of ``env_id`` ended: write its video, if filmed."""
        entry = self.videos.pop(env_id, None)
        if entry is None:
            return
        video, stem = entry
        video.instruction = instruction
        path = video.finish(self.folder / f"{stem}_{'success' if success else 'failure'}.mp4",
                            success)
        log.info("video: %s", path)
