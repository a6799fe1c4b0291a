"""Training a world model (``run.mode: train_world_model``): the frame predictor, then the
success model, on recorded episodes. One process, no sockets.

Episodes (``world_model.datasets``) are split into training and held-out ones. The
predictor (``world_model.generator``) takes ``world_model.steps`` AdamW steps on random
windows (:mod:`worldmodel.data`) minimising its own loss (the deterministic one: L1
weighted toward the pixels that change, over ``world_model.rollout_calls`` calls unrolled
on its own frames after ``world_model.rollout_after`` steps of one call; the diffusion
one: the noise's MSE). The success model then takes ``world_model.success_steps`` steps
of binary cross-entropy on frames drawn half successful, half not (with
``world_model.success_hold`` H, successful means achieved for H steps already: the frames
in between are left out), randomly shifted by up to 2 pixels;
``world_model.generated_share`` of each batch are frames the trained predictor generated
open loop from the training episodes (labelled by the real frames they stand for), so
that the success model judges generated frames, which are what the RL stage shows it, by
the outcome they stand for. Both use linear warmup then cosine decay. With
``world_model.init`` both start from a trained world model's weights (fine-tuning it,
e.g. on replays of what a policy did in it: ``benchmarks/bench_reward_agreement.py
--record``; 0 steps leave a part as it was). With ``world_model.state.steps`` a state model
(:mod:`worldmodel.state_model`) is then trained on the datasets' simulator states, its
own split held out (``val_fraction``, seeded by ``run.seed``), and with
``world_model.decoder.steps`` a state decoder (:mod:`worldmodel.decoder`) on the training
episodes' frames and recorded states: each afresh, or on from ``world_model.init``'s of
the same widths; neither is checkpointed mid-way (minutes), so a
resumed run trains them again.

Written to ``run.log_dir``: TensorBoard (``world_model/train_loss``,
``world_model/val_psnr_changed`` and ``world_model/copy_last_psnr_changed`` on held-out
windows, ``world_model/val_psnr_gain``; ``reward_model/train_loss``,
``reward_model/val_auc``; ``state_model/dynamics_loss``, ``state_model/success_loss``;
``decoder/train_loss``),
``checkpoint.pt`` (resumable with ``--resume``), ``world_model.pt``
(``env.world_model.checkpoint`` takes it), ``world_model_summary.json`` (with the held-out
position errors of :mod:`worldmodel.probe`, the success model's AUC on generated frames,
:func:`worldmodel.evaluate.outcome_agreement`, the state model's open-loop
verdicts on its held-out episodes, and the decoder's held-out PSNR from the real and the
predicted states; with no predictor or success-model steps (``world_model.init``'s
unchanged, or untrained for a world model the simulator draws), only the state model's
and the decoder's), and side-by-side mp4s of
held-out episodes, real | generated for the same actions, under ``videos/world_model``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from configs import Config, ConfigError, to_dict
from demos import ReadReport
from envs import image_orientation
from learner import checkpoint
from models import pick_device
from sft.data import hold_out, random_shift
from sft.trainer import lr_factor
from worldmodel.data import Episode, LabelledFrames, Windows, action_bounds, load_episodes
from worldmodel.evaluate import (generator_metrics, imagine, open_loop_metrics, success_auc,
                                 write_side_by_side)
from worldmodel.models import WorldModel, from_config, to_model_frames
from worldmodel.probe import position_errors, train_probe
from worldmodel.stages import train_decoder_stage, train_state_stage

log = logging.getLogger(__name__)
WARMUP_STEPS = 100
MIN_LR_RATIO = 0.1
WORLD_MODEL = "world_model.pt"


def predictor_loss(model: WorldModel, batch, device) -> torch.Tensor:
    """The generator's own training loss on a batch of windows."""
    return model.generator.loss(to_model_frames(batch.history).to(device),
                                model.normalise(torch.from_numpy(batch.actions).to(device)),
                                to_model_frames(batch.targets).to(device),
                                torch.from_numpy(batch.mask).to(device))


def success_loss(model: WorldModel, frames: np.ndarray, labels: np.ndarray,
                 instructions: list[str], device) -> torch.Tensor:
    """Binary cross-entropy of the success model's logits on uint8 ``frames``."""
    logits = model.scorer(to_model_frames(frames).to(device), instructions)
    return F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels).float().to(device))


def _optimizer(params, lr: float, steps: int):
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, min(WARMUP_STEPS, steps), steps, MIN_LR_RATIO))
    return opt, sched


def split_episodes(cfg: Config, rng: np.random.Generator) -> tuple[list[Episode], list[Episode],
                                                                  ReadReport]:
    """The training and held-out episodes of ``world_model.datasets`` (the first draws of
    ``rng``: a generator seeded with ``run.seed`` gives the split training used), and the
    reader's report."""
    w = cfg.world_model
    episodes, report = load_episodes(w.datasets, w.image_size, image_orientation(cfg.env),
                                     tuple(w.cameras))
    log.info("datasets: %s", report.summary())
    train, val = hold_out(episodes, w.val_fraction, w.max_episodes, rng)
    return train, val, report


def run(cfg: Config, stop: threading.Event | None = None) -> int:
    """Train both models (resuming with ``run.resume``); 0 when both are done."""
    stop = stop or threading.Event()
    w, log_dir = cfg.world_model, Path(cfg.run.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    device = pick_device(cfg.learner.device)
    train, val, report = split_episodes(cfg, rng)
    if not train:
        raise ConfigError(f"no episodes in world_model.datasets={w.datasets}")
    if not val:
        log.warning("no held-out episodes (world_model.val_fraction=0): metrics are on the "
                    "training episodes")
        val = train
    info = {"world_model": to_dict(cfg)["world_model"], "train_episodes": len(train),
            "val_episodes": len(val)}
    if w.init:
        model = start_from(w, train[0].actions.shape[1], info).to(device)
    else:
        low, high = action_bounds(train)
        model = from_config(w, train[0].actions.shape[1], low, high, info).to(device)
    # held-out metrics over the policy's chunk, however many calls the model needs for it
    one_call = Windows(train, w.condition_frames, w.chunk)
    unrolled = Windows(train, w.condition_frames, w.chunk * w.rollout_calls)
    val_windows = Windows(val, w.condition_frames, cfg.actions_per_chunk)
    frames = LabelledFrames(train, w.success_hold)
    opt_g, sched_g = _optimizer(model.generator.parameters(), w.lr, w.steps)
    opt_s, sched_s = _optimizer(model.scorer.parameters(), w.lr, w.success_steps)
    steps = {"generator": 0, "success": 0}
    if cfg.run.resume:
        steps = _restore(log_dir, model, (opt_g, sched_g, opt_s, sched_s), rng)
    writer = SummaryWriter(str(log_dir))
    log.info("world model on %d windows of %d episodes (%d held out): %d predictor steps, "
             "then %d success-model steps", len(one_call), len(train), len(val), w.steps,
             w.success_steps)
    metrics: dict = {}
    state = (opt_g, sched_g, opt_s, sched_s)
    began = shown = time.monotonic()
    first = dict(steps)  # a resumed run's rates count its own steps
    try:
        while steps["generator"] < w.steps and not stop.is_set():
            model.generator.train()
            windows = one_call if steps["generator"] < w.rollout_after else unrolled
            batch = windows.batch(rng.integers(len(windows), size=w.batch_size))
            loss = _step(predictor_loss(model, batch, device), model.generator, opt_g, sched_g)
            k = steps["generator"] = steps["generator"] + 1
            writer.add_scalar("world_model/train_loss", loss, k)
            writer.add_scalar("world_model/lr", opt_g.param_groups[0]["lr"], k)
            if k % w.val_every == 0 or k == w.steps:
                metrics.update(generator_metrics(model, val_windows, device))
                for name in ("val_psnr_changed", "copy_last_psnr_changed", "val_psnr_gain"):
                    writer.add_scalar(f"world_model/{name}", metrics[name], k)
            if k % w.checkpoint_every == 0:
                _save(log_dir, cfg, model, state, steps, rng)
            if time.monotonic() - shown >= cfg.run.progress_every_s or k == w.steps:
                held_out = (f"held-out PSNR on changed pixels {metrics['val_psnr_changed']:.2f} "
                            f"dB (copy-last {metrics['copy_last_psnr_changed']:.2f})"
                            if metrics else
                            f"held-out PSNR at step "
                            f"{min((k // w.val_every + 1) * w.val_every, w.steps)}")
                log.info("predictor step %d/%d | loss %.4f | %s | %.1f steps/s", k, w.steps,
                         loss, held_out, (k - first["generator"]) / (time.monotonic() - began))
                shown = time.monotonic()
        generated = None
        if steps["generator"] >= w.steps and steps["success"] < w.success_steps \
                and w.generated_share > 0 and not stop.is_set():
            generated = LabelledFrames(imagine(model, train, device), w.success_hold)
            log.info("success model: %.0f%% of each batch from %d generated frames",
                     100 * w.generated_share, len(generated.labels))
        began = time.monotonic()  # the success model's rate: its steps, not imagine's
        while steps["generator"] >= w.steps and steps["success"] < w.success_steps \
                and not stop.is_set():
            model.scorer.train()
            x, y, texts = _success_batch(frames, generated, w.success_batch_size,
                                         w.generated_share, rng)
            loss = _step(success_loss(model, random_shift(x, 2, rng), y, texts, device),
                         model.scorer, opt_s, sched_s)
            k = steps["success"] = steps["success"] + 1
            writer.add_scalar("reward_model/train_loss", loss, k)
            if k % w.val_every == 0 or k == w.success_steps:
                metrics["val_auc"] = success_auc(model, val, device)
                writer.add_scalar("reward_model/val_auc", metrics["val_auc"], k)
            if k % w.checkpoint_every == 0:
                _save(log_dir, cfg, model, state, steps, rng)
            if time.monotonic() - shown >= cfg.run.progress_every_s or k == w.success_steps:
                log.info("success-model step %d/%d | loss %.4f | held-out ROC AUC %.4f | "
                         "%.1f steps/s", k, w.success_steps, loss,
                         metrics.get("val_auc", float("nan")),
                         (k - first["success"]) / (time.monotonic() - began))
                shown = time.monotonic()
        if steps["generator"] >= w.steps and steps["success"] >= w.success_steps and \
                steps.get("state", 0) < w.state.steps and not stop.is_set():
            metrics.update(train_state_stage(cfg, model, writer, stop))
            steps["state"] = w.state.steps if not stop.is_set() else 0
        if steps["generator"] >= w.steps and steps["success"] >= w.success_steps and \
                steps.get("state", 0) >= w.state.steps and \
                steps.get("decoder", 0) < w.decoder.steps and not stop.is_set():
            metrics.update(train_decoder_stage(cfg, model, train, val, writer, stop, device))
            steps["decoder"] = w.decoder.steps if not stop.is_set() else 0
    finally:
        _save(log_dir, cfg, model, state, steps, rng)
        writer.close()
    done = steps["generator"] >= w.steps and steps["success"] >= w.success_steps and \
        steps.get("state", 0) >= w.state.steps and steps.get("decoder", 0) >= w.decoder.steps
    if not done:
        return 1
    model.cpu().save(log_dir / WORLD_MODEL)
    metrics.update(train_episodes=len(train), val_episodes=len(val),
                   train_windows=len(one_call))
    if not w.steps and not w.success_steps:
        log.info("the predictor and the success model are %s: no held-out figures of "
                 "theirs here", "world_model.init's, unchanged (its summary has them)"
                 if w.init else "untrained (frames from the simulator, judge: state)")
        return _finish(log_dir, steps, report, metrics, [])
    # the summary's held-out figures are those of the final models (a resumed run too)
    metrics.update(generator_metrics(model, val_windows, "cpu"))
    metrics["val_auc"] = success_auc(model, val, "cpu")
    rule = cfg.env.world_model
    open_loop = open_loop_metrics(model, val, rule.success_threshold, "cpu",
                                  rule.success_frames)
    metrics["val_auc_generated"] = open_loop.pop("auc_generated")
    metrics.update(open_loop)
    log.info("held-out: success-model ROC AUC %.4f on real frames, %.4f on generated ones; "
             "world-model success on episodes that really failed %.3f (the success model "
             "alone, on their real frames: %.3f), that really succeeded %.3f",
             metrics["val_auc"], metrics["val_auc_generated"],
             metrics["wm_success_on_real_failures"],
             metrics["scorer_success_on_real_failures"],
             metrics["wm_success_on_real_successes"])
    if w.position_dims and w.probe_steps:
        probe = train_probe(train, w.position_dims, w.probe_steps, rng)
        metrics.update(position_errors(model, probe, val_windows, "cpu"))
        log.info("position read from held-out frames: generated %.4f, copy-last %.4f, the "
                 "probe on real frames %.4f (state units); gap to the probe's reading of the "
                 "real frame: generated %.4f, copy-last %.4f",
                 metrics["val_position_error"], metrics["copy_last_position_error"],
                 metrics["probe_position_error_real"], metrics["val_position_gap"],
                 metrics["copy_last_position_gap"])
    videos = write_side_by_side(model, val[:w.videos], log_dir / "videos" / "world_model")
    return _finish(log_dir, steps, report, metrics, videos)


def _finish(log_dir: Path, steps: dict, report: ReadReport, metrics: dict,
            videos: list) -> int:
    """Write the summary; 0."""
    summary = {"steps": steps, "datasets": {"files": report.files, "demos": report.demos,
                                            "bad": report.bad},
               **metrics, "videos": [str(v) for v in videos]}
    (log_dir / "world_model_summary.json").write_text(json.dumps(summary, indent=1))
    log.info("world model done: %s (env.world_model.checkpoint=%s)", log_dir / WORLD_MODEL,
             log_dir / WORLD_MODEL)
    return 0


def start_from(w, action_dim: int, info: dict) -> WorldModel:
    """``world_model.init``'s model, to fine-tune: its weights, widths and action bounds
    (what its predictor learned on); its views, frame size, conditioning, chunk and action
    size must be the section's. ``info`` is added to its own."""
    try:
        model = WorldModel.load(w.init)
    except ValueError as exc:
        raise ConfigError(f"world_model.init: {exc}") from None
    theirs = (list(model.cameras), model.image_size, model.condition_frames, model.chunk,
              model.action_low.numel())
    ours = (list(w.cameras), w.image_size, w.condition_frames, w.chunk, action_dim)
    if theirs != ours:
        raise ConfigError(f"world_model.init={w.init} has (cameras, image_size, "
                          f"condition_frames, chunk, action size) {theirs}; world_model and "
                          f"the datasets give {ours}: make them match")
    model.info = {**model.info, **info, "init": w.init}
    return model


def _success_batch(real: LabelledFrames, generated: LabelledFrames | None, n: int,
                   share: float, rng: np.random.Generator):
    """``n`` frames, ``share`` of them generated (none without ``generated``), each part
    half successful."""
    n_gen = round(share * n) if generated is not None else 0
    parts = [real.balanced(n - n_gen, rng)] + ([generated.balanced(n_gen, rng)] if n_gen else [])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [t for p in parts for t in p[2]])


def _step(loss: torch.Tensor, module, optimizer, scheduler) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _save(log_dir: Path, cfg: Config, model: WorldModel, state, steps: dict,
          rng: np.random.Generator) -> None:
    opt_g, sched_g, opt_s, sched_s = state
    checkpoint.save_state(log_dir, {
        "model": model.state_dict(), "opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(),
        "opt_s": opt_s.state_dict(), "sched_s": sched_s.state_dict(), "steps": dict(steps),
        "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
        "kind": "world_model", "config": to_dict(cfg)},
        {"version": steps["generator"] + steps["success"], "incarnation": cfg.run.incarnation,
         "kind": "world_model"})


def _restore(log_dir: Path, model: WorldModel, state, rng: np.random.Generator) -> dict:
    path = log_dir / checkpoint.CHECKPOINT
    opt_g, sched_g, opt_s, sched_s = state
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights = saved["model"]
        for part, key in (("state_model", "state"), ("decoder", "decoder")):
            if getattr(model, part) is None:  # not rebuilt here: it trains again
                weights = {k: v for k, v in weights.items() if not k.startswith(part + ".")}
                saved["steps"].pop(key, None)
        model.load_state_dict(weights)
        for obj, key in ((opt_g, "opt_g"), (sched_g, "sched_g"), (opt_s, "opt_s"),
                         (sched_s, "sched_s")):
            obj.load_state_dict(saved[key])
        torch.set_rng_state(saved["rng"]["torch"])
        rng.bit_generator.state = saved["rng"]["numpy"]
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"cannot resume the world model from {path}: "
                                         f"{type(exc).__name__}: {exc}") from exc
    log.info("resumed the world model from %s at %s", path, saved["steps"])
    return dict(saved["steps"])
