"""A trained world model on held-out episodes: one-chunk PSNR against copying the last
frame, the success model's ROC AUC (on real frames and on generated ones), episode
outcomes in the world model against the simulator's, open-loop rollouts and side-by-side
videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldmodel.data import Episode, WindowBatch, Windows, split_views
from worldmodel.metrics import changed_pixels, psnr, roc_auc, squared_error
from worldmodel.models import WorldModel, to_images, to_model_frames

EVAL_BATCH = 64


def chunk_frames(model: WorldModel, batch: WindowBatch, device,
                 frames: str = "generator") -> torch.Tensor:
    """A window batch's frames [B,T,C,H,W] as the world model makes them: from the history
    by the frame predictor (``generator``), or (``state``) drawn by the decoder from the
    states the state model predicts from the last history frame's recorded state."""
    if frames == "state":
        if batch.first_sim is None:
            raise ValueError("frames from states need episodes with simulator states")
        return model.from_states(torch.from_numpy(batch.first_sim).to(device),
                                 torch.from_numpy(batch.actions).to(device))
    acts = model.normalise(torch.from_numpy(batch.actions).to(device))
    return model.generate(to_model_frames(batch.history).to(device), acts)


@torch.no_grad()
def generator_metrics(model: WorldModel, windows: Windows, device,
                      max_windows: int = 2048, frames: str = "generator") -> dict:
    """PSNR of one chunk's predicted frames (the windows' chunk: the policy's, generated
    in as many calls as the model needs) on the pixels that change, the same for
    copying the last history frame, their difference (``val_psnr_gain``, dB), and PSNR
    over whole frames; over the first ``max_windows`` windows (every one when fewer).
    The cameras' views count as pixels of their own; a model of several cameras also
    gets each camera's ``val_psnr_changed_<camera>`` and ``copy_last_..._<camera>``.
    ``frames``: whose frames (:func:`chunk_frames`)."""
    model.generator.eval()
    rows = np.arange(min(len(windows), max_windows))
    cameras = {c: slice(3 * v, 3 * v + 3) for v, c in enumerate(model.cameras)}
    sums = {(key, c): [0.0, 0] for key in ("pred", "copy", "pred_all") for c in cameras}
    for start in range(0, len(rows), EVAL_BATCH):
        batch = windows.batch(rows[start:start + EVAL_BATCH])
        generated = to_images(chunk_frames(model, batch, device, frames))
        for camera, channels in cameras.items():
            pred, targets = generated[..., channels], batch.targets[..., channels]
            last = batch.history[:, -1][..., channels]
            changed = changed_pixels(last, targets) & batch.mask[:, :, None, None]
            whole = np.broadcast_to(batch.mask[:, :, None, None], changed.shape)
            copy = np.broadcast_to(last[:, None], targets.shape)
            for key, guess, where in (("pred", pred, changed), ("copy", copy, changed),
                                      ("pred_all", pred, whole)):
                sq, n = squared_error(guess, targets, where)
                sums[key, camera][0] += sq
                sums[key, camera][1] += n
    # every camera's pixels together: the sums of their squared errors and counts
    total = {key: [sum(sums[key, c][i] for c in cameras) for i in (0, 1)]
             for key in ("pred", "copy", "pred_all")}
    out = {"val_psnr_changed": psnr(*total["pred"]),
           "copy_last_psnr_changed": psnr(*total["copy"]),
           "val_psnr_all": psnr(*total["pred_all"]),
           "changed_pixel_share": total["pred"][1] / max(total["pred_all"][1], 1)}
    out["val_psnr_gain"] = out["val_psnr_changed"] - out["copy_last_psnr_changed"]
    if len(cameras) > 1:
        for camera in cameras:
            out[f"val_psnr_changed_{camera}"] = psnr(*sums["pred", camera])
            out[f"copy_last_psnr_changed_{camera}"] = psnr(*sums["copy", camera])
    return out


@torch.no_grad()
def scores(model: WorldModel, frames: np.ndarray, instructions: list[str],
           device) -> np.ndarray:
    """The success model's probability for each uint8 frame [N,H,W,C] and instruction."""
    model.scorer.eval()
    return np.concatenate([
        model.scorer.score(to_model_frames(frames[i:i + 256]).to(device),
                           instructions[i:i + 256]).cpu().numpy()
        for i in range(0, len(frames), 256)])


def episode_scores(model: WorldModel, episodes: list[Episode], device) -> list[np.ndarray]:
    """The success model's probability for every frame of each episode, in one pass."""
    frames = np.concatenate([e.frames for e in episodes])
    texts = [e.instruction for e in episodes for _ in range(len(e.frames))]
    flat = scores(model, frames, texts, device)
    return np.split(flat, np.cumsum([len(e.frames) for e in episodes])[:-1])


def success_auc(model: WorldModel, episodes: list[Episode], device) -> float:
    """ROC AUC of the success model over every frame of ``episodes`` (nan without both
    kinds of frame)."""
    return roc_auc(np.concatenate(episode_scores(model, episodes, device)),
                   np.concatenate([e.labels for e in episodes]))


@torch.no_grad()
def rollout(model: WorldModel, first: np.ndarray, actions: np.ndarray, device) -> np.ndarray:
    """Open loop, as the env runs: from uint8 first frames [B,H,W,C] and env-unit actions
    [B,L,D], the L generated frames [B,L,H,W,C], chunk after chunk on its own frames (a
    last partial chunk is padded with its last action)."""
    model.generator.eval()
    length = actions.shape[1]
    history = to_model_frames(first).to(device)[:, None].repeat(1, model.condition_frames,
                                                                 1, 1, 1)
    steps = np.minimum(np.arange(-(-length // model.chunk) * model.chunk), length - 1)
    frames = model.generate(history, model.normalise(torch.from_numpy(actions[:, steps])
                                                     .to(device)))
    return to_images(frames)[:, :length]


def imagine(model: WorldModel, episodes: list[Episode], device,
            batch: int = 32) -> list[Episode]:
    """Each episode as the world-model env would show it: the real first frame, then the
    frames generated open loop from it and the recorded actions, with the real episode's
    labels (generated frame t is labelled by the real frame t it stands for)."""
    out = []
    for start in range(0, len(episodes), batch):
        part = episodes[start:start + batch]
        longest = max(len(e) for e in part)
        # shorter episodes repeat their last action; their extra frames are dropped
        actions = np.stack([np.pad(e.actions, ((0, longest - len(e)), (0, 0)), mode="edge")
                            for e in part])
        gen = rollout(model, np.stack([e.frames[0] for e in part]), actions, device)
        out += [Episode(np.concatenate([e.frames[:1], g[:len(e)]]), e.actions, e.labels,
                        e.instruction, e.states) for e, g in zip(part, gen)]
    return out


def peak_scores(model: WorldModel, imagined: list[Episode], device,
                frames: int = 1) -> np.ndarray:
    """Each episode's highest success probability over its frames after the first (the
    ones the world model generates), held ``frames`` consecutive frames
    (:func:`envs.world_model.held_probs`): it is a world-model success at threshold ``t``
    when this reaches ``t`` (:func:`envs.world_model.frame_success`)."""
    return _peaks(episode_scores(model, imagined, device), frames)


def _peaks(per_episode: list[np.ndarray], frames: int) -> np.ndarray:
    from envs.world_model import held_probs

    return np.array([held_probs(s[1:], frames).max() for s in per_episode])


def outcome_rates(peaks: np.ndarray, real: list[Episode], threshold: float) -> dict:
    """Episode outcomes in the world model (``peaks`` from :func:`peak_scores` reaching
    ``threshold``) against the simulator's (the episode succeeded), for the same first
    frames and actions: :func:`agreement_rates`."""
    from envs.world_model import frame_success

    return agreement_rates(frame_success(peaks, threshold),
                           np.array([bool(e.labels.any()) for e in real]))


def agreement_rates(said: np.ndarray, real: np.ndarray) -> dict:
    """Per-episode successes the world model called (``said``, bool [E]) against the real
    outcomes (``real``, bool [E]): its success rate on the episodes that really failed
    (``wm_success_on_real_failures``: its optimism) and on those that really succeeded
    (``wm_success_on_real_successes``; nan where there are none), the share of episodes
    where the two agree, and both success rates."""
    said, real = np.asarray(said, bool), np.asarray(real, bool)

    def rate(sel: np.ndarray) -> float:
        return float(said[sel].mean()) if sel.any() else float("nan")

    return {"wm_success_on_real_failures": rate(~real),
            "wm_success_on_real_successes": rate(real),
            "outcome_agreement": float((said == real).mean()),
            "real_success_rate": float(real.mean()), "wm_success_rate": float(said.mean())}


def outcome_agreement(model: WorldModel, real: list[Episode], imagined: list[Episode],
                      threshold: float, device) -> dict:
    """:func:`outcome_rates` of ``imagined`` (the frames judged) against ``real`` (the
    outcomes) at ``threshold``."""
    return outcome_rates(peak_scores(model, imagined, device), real, threshold)


def open_loop_metrics(model: WorldModel, episodes: list[Episode], threshold: float,
                      device, frames: int = 1) -> dict:
    """``episodes`` replayed open loop (:func:`imagine`): the success model's ROC AUC on
    the generated frames (``auc_generated``) and :func:`outcome_agreement` (success held
    ``frames`` frames, as ``env.world_model.success_frames``); and the success model's
    own share of the optimism, the same rule on the real frames
    (``scorer_success_on_real_failures``: no generator involved)."""
    generated = episode_scores(model, imagine(model, episodes, device), device)
    on_real = outcome_rates(_peaks(episode_scores(model, episodes, device), frames),
                            episodes, threshold)
    return {"auc_generated": roc_auc(np.concatenate(generated),
                                     np.concatenate([e.labels for e in episodes])),
            **outcome_rates(_peaks(generated, frames), episodes, threshold),
            "scorer_success_on_real_failures": on_real["wm_success_on_real_failures"]}


def write_side_by_side(model: WorldModel, episodes: list[Episode], folder: Path,
                       fps: int = 10) -> list[Path]:
    """One mp4 per episode: the recorded frames | the frames the model generates from the
    same first frame and actions (each camera's views side by side), each shown at least
    128 px high."""
    from actors.video import write_mp4

    paths = []
    for i, ep in enumerate(episodes):
        gen = rollout(model, ep.frames[:1], ep.actions[None], "cpu")[0]
        frames = split_views(np.concatenate([ep.frames, np.concatenate([ep.frames[:1], gen])],
                                            axis=2))
        scale = max(1, -(-128 // frames.shape[1]))
        frames = frames.repeat(scale, 1).repeat(scale, 2)
        paths.append(write_mp4(folder / f"episode{i:03d}_real_vs_generated.mp4", list(frames),
                               fps))
    return paths
