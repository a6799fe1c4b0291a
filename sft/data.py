"""Behaviour-cloning samples from demonstrations: every step's observation and its chunk.

Sample (demo d, step t) is the observation before action t -- main camera, wrist camera
when the policy reads it, state, instruction -- and the target chunk ``a[t : t+T]``: the
T actions the demonstrator took from there, in the policy's gripper convention. Past an
episode's end the chunk is padded by repeating its last action; ``mask`` is False there
unless ``pad`` says to train on the padding too. Training on it matters when episodes end
at success: a chunk executed in full must keep doing the right thing after the point
where the demonstration stopped, or the policy's untrained tail undoes its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demos import Demo
from envs.base import EnvObs
from envs.robot_io import policy_gripper, state_8_to_7


@dataclass
class Batch:
    """A batch of samples: the observations, target chunks [B,T,D] and mask [B,T]."""

    obs: EnvObs
    actions: np.ndarray
    mask: np.ndarray


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ's augmentation: each image [B,H,W,3] padded by ``pad`` edge pixels and cropped
    back at a random offset (a shift of up to ``pad`` pixels each way)."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


class ChunkSamples:
    """Every step of ``demos`` as a sample with its chunk of ``chunk`` actions."""

    def __init__(self, demos: list[Demo], chunk: int, gripper_convention: str,
                 state_dim: int, wrist: bool, pad: bool = False,
                 drawn: list[np.ndarray] | None = None, drawn_share: float = 0.0):
        if not demos:
            raise ValueError("no demonstrations to sample from")
        self.demos, self.chunk, self.wrist, self.pad = demos, chunk, wrist, pad
        # each demo's main camera drawn by a world model (sft/drawn.py), shown instead of
        # the real frame to a drawn_share of the samples when the batch is augmented
        self.drawn, self.drawn_share = drawn, drawn_share
        self.actions = [policy_gripper(d.actions, gripper_convention) for d in demos]
        self.states = [d.states if state_dim == d.states.shape[1] else
                       state_8_to_7(d.states) for d in demos]
        if self.states[0].shape[1] != state_dim:
            raise ValueError(f"demonstrations have {self.states[0].shape[1]}-D states but "
                             f"model.state_dim={state_dim}")
        if wrist and any(d.wrist_images is None for d in demos):
            raise ValueError("the policy reads the wrist camera but a demonstration has "
                             "none; record with env.wrist_camera=true")
        self.index = np.array([(d, t) for d, demo in enumerate(demos)
                               for t in range(len(demo))], np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray, rng: np.random.Generator | None = None,
              shift: int = 0) -> Batch:
        """The samples ``rows`` (indices into ``index``); with ``rng``, ``shift``
        random-shifts the images and a ``drawn_share`` of them show the drawn frame."""
        mains, wrists, states, texts, chunks, masks = [], [], [], [], [], []
        drawn = (rng.random(len(rows)) < self.drawn_share if self.drawn and rng is not None
                 else np.zeros(len(rows), bool))
        for (d, t), use_drawn in zip(self.index[rows], drawn):
            demo, actions = self.demos[d], self.actions[d]
            steps = np.arange(t, t + self.chunk)
            masks.append(np.ones(self.chunk, bool) if self.pad else steps < len(actions))
            chunks.append(actions[np.minimum(steps, len(actions) - 1)])
            mains.append(self.drawn[d][t] if use_drawn else demo.main_images[t])
            if self.wrist:
                wrists.append(demo.wrist_images[t])
            states.append(self.states[d][t])
            texts.append(demo.instruction)
        main, wrist = np.stack(mains), np.stack(wrists) if self.wrist else None
        if shift and rng is not None:
            main = random_shift(main, shift, rng)
            wrist = random_shift(wrist, shift, rng) if wrist is not None else None
        obs = EnvObs(main, np.stack(states).astype(np.float32), texts, wrist)
        return Batch(obs, np.stack(chunks).astype(np.float32), np.stack(masks))


def hold_out(items: list, val_fraction: float, max_count: int,
             rng: np.random.Generator) -> tuple[list, list]:
    """(train, held out): at most ``max_count`` of ``items`` drawn at random (0: all),
    ``val_fraction`` of them held out (at least one when there are two or more and
    val_fraction > 0)."""
    order = rng.permutation(len(items))
    if max_count:
        order = order[:max_count]
    n_val = int(round(val_fraction * len(order)))
    if val_fraction > 0 and len(order) >= 2:
        n_val = max(1, n_val)
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def split_by_episode(demos: list[Demo], val_fraction: float, max_per_task: int,
                     rng: np.random.Generator) -> tuple[list[Demo], list[Demo]]:
    """(train, validation): :func:`hold_out` per task (instruction), with at most
    ``max_per_task`` episodes of each."""
    by_task: dict[str, list[Demo]] = {}
    for demo in demos:
        by_task.setdefault(demo.instruction, []).append(demo)
    train, val = [], []
    for task in sorted(by_task):
        got_train, got_val = hold_out(by_task[task], val_fraction, max_per_task, rng)
        train += got_train
        val += got_val
    return train, val
