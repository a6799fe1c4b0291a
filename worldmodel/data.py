"""World-model data: recorded episodes as frame sequences, training windows, labelled
frames, and the first frames that reset a world-model env.

An :class:`Episode` is L actions and the L+1 frames around them: frame t is what the
camera showed before action t, frame L what the last action led to (chunkrl's recordings
keep it as ``final_obs``; a file without it loses its last action). Frame t+1 is labelled
with the simulator's success after action t; frame 0 never succeeds.

Window (e, t) conditions on frames ``t-K+1 .. t`` (before the start: frame 0 repeated, as
a reset gives the world model) and actions ``t .. t+T-1``, and targets frames
``t+1 .. t+T``; target steps past the episode's end are masked out (their actions
repeat the last one).

A world model of several cameras (``world_model.cameras``: main, then wrist or cameras
rendered afterwards, e.g. ``table_front``) sees each step's views stacked as channels,
frames [..,H,W,3V]; an episode without every view's frame after the last action (recorded
since ``final_obs`` keeps them; not in views rendered afterwards) loses its last action.

Reset frames also come from RLinf's world-model datasets: folders of ``traj*.npy``, each
a sequence of per-step dicts with ``image`` (HWC uint8), ``wrist_image`` when the world
model sees the wrist camera, and ``instruction`` (or ``task``), of which only step 0 is
used, as RLinf's env does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from demos import Demo, ReadReport, read_demos

NPY_GLOB = "traj*.npy"
MAIN_ONLY = ("main",)  # world_model.cameras of RLinf's one-camera world model


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N,H,W,C] -> [N,size,size,C] by area averaging (what the CNN policy does to
    the simulator's frames, so the world model's frames look like those it was shown)."""
    if images.shape[1:3] == (size, size):
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def split_views(frames: np.ndarray) -> np.ndarray:
    """uint8 [...,H,W,3V] (views stacked as channels) -> [...,H,V*W,3], the views side by
    side, to look at."""
    views = np.split(frames, frames.shape[-1] // 3, axis=-1)
    return np.concatenate(views, axis=-2)


def demo_views(demo: Demo, cameras: tuple[str, ...]) -> np.ndarray:
    """The demo's frames of ``cameras`` (main first) stacked as channels, in their order;
    a missing camera names itself."""
    views = [demo.main_images]
    for camera in cameras[1:]:
        images = demo.wrist_images if camera == "wrist" else demo.views.get(camera)
        if images is None:
            raise ValueError(f"the world model sees the {camera} camera but a recording has "
                             "none: " + ("record with env.wrist_camera=true" if camera == "wrist"
                                         else f"scripts/render_camera.py --camera {camera}")
                             + ", or set world_model.cameras=[main]")
        views.append(images)
    return np.concatenate(views, axis=-1)


@dataclass
class Episode:
    """Frames uint8 [L+1,H,W,3V] (V cameras stacked as channels), actions float32 [L,D],
    labels bool [L+1] (frame k shows the task achieved), the instruction, the state
    vector of frames 0..L-1 [L,S] (the last frame's was never observed), or None, and the
    simulator's state in frames 0..L-1 [L,M] where the recording kept it (robosuite,
    LIBERO), else None."""

    frames: np.ndarray
    actions: np.ndarray
    labels: np.ndarray
    instruction: str
    states: np.ndarray | None = None
    sim_states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)


def episode_from_demo(demo: Demo, image_size: int,
                      cameras: tuple[str, ...] = MAIN_ONLY) -> Episode | None:
    """The demo's frames of ``cameras`` and actions (None when fewer than two frames
    remain)."""
    frames = demo_views(demo, cameras)
    actions, success, states = demo.actions, demo.success, demo.states
    sim = demo.extras.get("states")
    finals = [demo.final_main_image] + [demo.final_views.get(c) for c in cameras[1:]]
    if all(f is not None for f in finals):
        frames = np.concatenate([frames, np.concatenate(finals, -1)[None]])
    else:  # without the final frame(s) the last action has no frame to lead to
        actions, success, states = actions[:-1], success[:-1], states[:-1]
        sim = None if sim is None else sim[:-1]
    if len(actions) < 1:
        return None
    labels = np.concatenate([[False], success.astype(bool)])
    return Episode(resize(frames, image_size), actions.astype(np.float32), labels,
                   demo.instruction, np.asarray(states, np.float32),
                   None if sim is None else np.asarray(sim, np.float32))


def load_episodes(paths: Iterable[str], image_size: int, orientation: str = "upright",
                  cameras: tuple[str, ...] = MAIN_ONLY) -> tuple[list[Episode], ReadReport]:
    """Every episode under ``paths`` (HDF5 files or folders) with the views of
    ``cameras``, and the reader's report."""
    demos, report = read_demos(paths, orientation, cameras)
    episodes = [e for e in (episode_from_demo(d, image_size, cameras) for d in demos)
                if e is not None]
    return episodes, report


def action_bounds(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension 1st and 99th percentiles of every action (q01, q99)."""
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float64)
    return np.quantile(actions, 0.01, axis=0), np.quantile(actions, 0.99, axis=0)


@dataclass
class WindowBatch:
    """uint8 history [B,K,H,W,3], env-unit actions [B,T,D], uint8 targets [B,T,H,W,3],
    mask bool [B,T] (False past the episode's end); the targets' states [B,T,S] and
    state_mask [B,T] (False where no state was observed) when the episodes have states;
    the simulator's state in the last history frame [B,M] when they have those."""

    history: np.ndarray
    actions: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    target_states: np.ndarray | None = None
    state_mask: np.ndarray | None = None
    first_sim: np.ndarray | None = None


class Windows:
    """Every (episode, start step) of ``episodes`` as a prediction window."""

    def __init__(self, episodes: list[Episode], condition_frames: int, chunk: int):
        if not episodes:
            raise ValueError("no episodes to make windows of")
        self.episodes, self.k, self.t = episodes, condition_frames, chunk
        self.index = np.array([(e, t) for e, ep in enumerate(episodes)
                               for t in range(len(ep))], np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray) -> WindowBatch:
        """The windows ``rows`` (indices into ``index``)."""
        hist, acts, targets, masks, states, state_masks, sims = [], [], [], [], [], [], []
        with_states = all(ep.states is not None for ep in self.episodes)
        with_sim = all(ep.sim_states is not None for ep in self.episodes)
        for e, t in self.index[rows]:
            ep = self.episodes[e]
            hist.append(ep.frames[np.clip(np.arange(t - self.k + 1, t + 1), 0, None)])
            steps = np.arange(t, t + self.t)
            acts.append(ep.actions[np.minimum(steps, len(ep) - 1)])
            targets.append(ep.frames[np.minimum(steps + 1, len(ep))])
            masks.append(steps < len(ep))
            if with_states:
                states.append(ep.states[np.minimum(steps + 1, len(ep) - 1)])
                state_masks.append(steps + 1 < len(ep))
            if with_sim:
                sims.append(ep.sim_states[t])
        return WindowBatch(np.stack(hist), np.stack(acts), np.stack(targets), np.stack(masks),
                           np.stack(states) if with_states else None,
                           np.stack(state_masks) if with_states else None,
                           np.stack(sims) if with_sim else None)


def held_labels(labels: np.ndarray, hold: int) -> tuple[np.ndarray, np.ndarray]:
    """The success model's targets when success must have held ``hold`` steps: frame t is
    positive when frames t-hold..t all show the task achieved, and left out (``usable``
    False) when it shows it achieved for fewer steps; every other frame is negative.
    ``hold`` 0: the labels themselves, every frame usable."""
    if hold == 0:
        return labels.copy(), np.ones(len(labels), bool)
    run = np.zeros(len(labels), np.int64)  # consecutive achieved frames ending at t
    for t, achieved in enumerate(labels):
        run[t] = run[t - 1] + 1 if achieved and t else int(achieved)
    positive = run > hold
    return positive, positive | ~labels


class LabelledFrames:
    """Every frame of ``episodes`` with its success label (:func:`held_labels` with
    ``hold``) and instruction, for the success model."""

    def __init__(self, episodes: list[Episode], hold: int = 0):
        self.frames = np.concatenate([e.frames for e in episodes])
        labelled = [held_labels(e.labels, hold) for e in episodes]
        self.labels = np.concatenate([lab for lab, _ in labelled])
        usable = np.concatenate([use for _, use in labelled])
        self.instructions = [e.instruction for e in episodes for _ in range(len(e.frames))]
        self.positive = np.flatnonzero(self.labels)
        self.negative = np.flatnonzero(~self.labels & usable)
        if not len(self.positive) or not len(self.negative):
            held = (f" held {hold} steps (record with env.success_hold_steps >= {hold}, or "
                    "lower world_model.success_hold)") if hold else ""
            raise ValueError(f"the success model needs frames of both kinds: {len(self.positive)}"
                             f" successful{held}, {len(self.negative)} not; record episodes "
                             "that succeed and episodes that fail")

    def balanced(self, n: int, rng: np.random.Generator):
        """``n`` frames, half of them positive (drawn with replacement), their labels and
        instructions."""
        half = n // 2
        rows = np.concatenate([rng.choice(self.positive, half),
                               rng.choice(self.negative, n - half)])
        return self.frames[rows], self.labels[rows], [self.instructions[i] for i in rows]


@dataclass(frozen=True)
class ResetFrame:
    """A world-model env's starting frame (uint8 [H,W,3V]: its cameras' views stacked),
    instruction, and the simulator's initial state it was recorded from (-1: unknown, as
    in RLinf's ``traj*.npy``); ``sim_state``: that state itself (MuJoCo's, float32 [S]),
    read for a world model's state model only. ``step``: the recorded episode's step the
    frame is from (0: its first; later: a branch point, :func:`branch_frames`)."""

    frame: np.ndarray
    instruction: str
    init_state_id: int = -1
    sim_state: np.ndarray | None = None
    step: int = 0


NPY_KEYS = {"main": "image", "wrist": "wrist_image"}


def read_npy_trajectory(path: Path, cameras: tuple[str, ...] = MAIN_ONLY) -> ResetFrame:
    """Step 0 of one RLinf ``traj*.npy`` file, the views of ``cameras`` stacked; a bad
    file names itself and what is wrong."""
    missing = [c for c in cameras if c not in NPY_KEYS]
    if missing:
        raise ValueError(f"{path}: RLinf's trajectories hold no {missing[0]} camera "
                         f"(only {sorted(NPY_KEYS)}); reset from chunkrl's HDF5 recordings")
    keys = [NPY_KEYS[c] for c in cameras]
    try:
        steps = np.load(path, allow_pickle=True)
        first = steps[0]
        images = [np.asarray(first[k]) for k in keys]
        text = first.get("instruction", first.get("task"))
    except (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not an RLinf trajectory (a sequence of step dicts with "
                         f"{', '.join(map(repr, keys))} and 'instruction'): "
                         f"{type(exc).__name__}: {exc}") from exc
    if text is None:
        raise ValueError(f"{path}: step 0 has no 'instruction' (or 'task')")
    for key, image in zip(keys, images):
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape != images[0].shape:
            raise ValueError(f"{path}: step 0's {key} is {image.shape}, not HWC RGB "
                             f"{'' if key == keys[0] else 'of the main image size'}")
    images = [im if im.dtype == np.uint8  # RLinf also stores floats in [0, 1]
              else (np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in images]
    return ResetFrame(np.concatenate(images, axis=-1),
                      text.decode() if isinstance(text, bytes) else str(text))


def _demos_with_states(paths: Iterable, orientation: str, cameras: tuple[str, ...], what: str,
                       needs: str) -> list[Demo]:
    """The HDF5 recordings under ``paths``; ValueError if one keeps no simulator states
    (``what`` and ``needs`` word the message: the data and the option that needs them)."""
    demos, _ = read_demos(paths, orientation, cameras)
    if any("states" not in d.extras for d in demos):
        raise ValueError(f"{what} without simulator states (data/demo_N/states), which "
                         f"{needs}: give robosuite or LIBERO recordings")
    return demos


def reset_frames(paths: Iterable[str], image_size: int, orientation: str = "upright",
                 cameras: tuple[str, ...] = MAIN_ONLY,
                 sim_states: bool = False) -> list[ResetFrame]:
    """The first frame (the views of ``cameras``) and instruction of every episode under
    ``paths``: HDF5 recordings (files or folders) and folders (or files) of RLinf
    ``traj*.npy``, resized; with ``sim_states`` also each episode's first simulator state
    (HDF5 recordings of robosuite or LIBERO only: anything else raises ValueError)."""
    out: list[ResetFrame] = []
    h5_paths = []
    for p in map(Path, paths):
        npys = sorted(f for f in p.glob(NPY_GLOB) if "_kir" not in f.name) if p.is_dir() \
            else [p] if p.suffix == ".npy" else []
        if npys and sim_states:
            raise ValueError(f"{p}: RLinf's trajectories keep no simulator state, which "
                             "env.world_model.judge=state/both needs: reset from chunkrl's "
                             "robosuite or LIBERO recordings")
        for f in npys:
            got = read_npy_trajectory(f, cameras)
            out.append(ResetFrame(resize(got.frame[None], image_size)[0], got.instruction))
        if not npys:
            h5_paths.append(p)
    if h5_paths:
        demos = _demos_with_states(h5_paths, orientation, cameras, "reset data",
                                   "env.world_model.judge=state/both and frames=state need") \
            if sim_states else read_demos(h5_paths, orientation, cameras)[0]
        out += [ResetFrame(resize(demo_views(d, cameras)[:1], image_size)[0], d.instruction,
                           d.init_state_id,
                           d.extras["states"][0].astype(np.float32) if sim_states else None)
                for d in demos]
    if not out:
        raise ValueError(f"no episodes to reset from in {list(map(str, paths))}: give HDF5 "
                         f"recordings or folders of RLinf {NPY_GLOB}")
    return out


def branch_frames(paths: Iterable[str], image_size: int, every: int, orientation: str = "upright",
                  cameras: tuple[str, ...] = MAIN_ONLY, successes_only: bool = False,
                  before_success: int = 0) -> list[ResetFrame]:
    """Steps t = every, 2 every, ... of each HDF5 recording under ``paths``, below the
    step whose action first succeeded (the whole episode when none did), as reset frames
    with the simulator state of step t and ``step`` t: states an episode really reached,
    to start world-model episodes from (MBPO's branched rollouts). ``successes_only``
    skips the episodes that never succeeded; in one that did, only steps more than
    ``before_success`` below the success step are kept. A recording without simulator
    states raises ValueError."""
    demos = _demos_with_states(paths, orientation, cameras, "branch data",
                               "env.world_model.branch needs")
    if not demos:
        raise ValueError(f"no episodes to branch from in {list(map(str, paths))}: give chunkrl "
                         "robosuite or LIBERO HDF5 recordings")
    out = []
    for d in demos:
        if successes_only and not d.succeeded:
            continue
        end = int(np.argmax(d.success)) - before_success if d.succeeded else len(d)
        steps = np.arange(every, end, every)
        if len(steps):
            frames = resize(demo_views(d, cameras)[steps], image_size)
            out += [ResetFrame(f, d.instruction, d.init_state_id,
                               d.extras["states"][t].astype(np.float32), int(t))
                    for f, t in zip(frames, steps)]
    return out
