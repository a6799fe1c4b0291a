"""Behaviour cloning (``run.mode: sft``): the configured policy trained on demonstrations.

One process, no sockets. Demonstrations come from ``sft.datasets`` (chunkrl's recordings
or LIBERO's files); episodes are split per task into training and validation; every step
of a training episode is a sample (:mod:`sft.data`). Each optimizer step takes
``sft.batch_size`` random samples, with random-shift image augmentation, and minimises the
model's own imitation loss (``Policy.bc_loss``): Gaussian NLL (or MSE) for the CNN policy,
L1 on the chunk for QwenOFT, cross-entropy on the action tokens for OpenVLA-OFT. AdamW,
linear warmup then cosine decay, gradient clipping.

Written to ``run.log_dir``: TensorBoard (``sft/train_loss``, ``sft/val_loss``, ``sft/lr``),
``dataset_statistics.json`` (OpenVLA's layout, computed from the training episodes; VLAs
un-normalise with it), ``checkpoint.pt`` every ``sft.checkpoint_every`` steps and at the
end (``model.checkpoint`` takes it for RL or evaluation; ``--resume`` continues it), and
``sft_summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from configs import Config, ConfigError, to_dict
from demos import read_demos
from demos.stats import dataset_statistics, write_statistics
from envs import image_orientation
from envs.robot_io import policy_gripper, state_8_to_7
from learner import checkpoint
from models import build_policy, pick_device
from models.action_norm import ActionNorm
from sft.data import ChunkSamples, split_by_episode
from sft.drawn import drawn_main_images

log = logging.getLogger(__name__)


def default_unnorm_key(cfg: Config) -> str:
    """``sft.unnorm_key``, else the env's suite (LIBERO) or task (robosuite_lift)."""
    if cfg.sft.unnorm_key:
        return cfg.sft.unnorm_key
    if cfg.env.kind == "libero":
        return cfg.env.libero.suite
    if cfg.env.kind == "robosuite":
        return f"robosuite_{cfg.env.robosuite.task.lower()}"
    return cfg.env.kind


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at
    ``total``: f = min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2, p the share of
    the decay done."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def load_samples(cfg: Config, rng: np.random.Generator, wrist: bool):
    """Training and validation samples (with the wrist camera when ``wrist``), and the
    statistics of the training actions."""
    demos, report = read_demos(cfg.sft.datasets, image_orientation(cfg.env),
                               ("main", "wrist") if wrist else ("main",), cfg.env.image_size)
    log.info("datasets: %s", report.summary())
    if cfg.sft.only_successes:
        demos = [d for d in demos if d.succeeded]
    if not demos:
        raise ConfigError(f"no {'successful ' if cfg.sft.only_successes else ''}"
                          f"demonstrations in sft.datasets={cfg.sft.datasets}")
    train, val = split_by_episode(demos, cfg.sft.val_fraction, cfg.sft.max_episodes, rng)
    convention, chunk = cfg.env.gripper_convention, cfg.model.num_action_chunks
    state_dim = cfg.model.state_dim
    pad = cfg.sft.pad_chunks
    drawn = None
    if cfg.sft.drawn_frames:
        try:
            drawn = drawn_main_images(train, cfg.sft.drawn_frames)
        except ValueError as exc:
            raise ConfigError(f"sft.drawn_frames: {exc}") from None
        log.info("%.0f%% of the samples show the main camera drawn by %s's decoder",
                 100 * cfg.sft.drawn_share, cfg.sft.drawn_frames)
    train_set = ChunkSamples(train, chunk, convention, state_dim, wrist, pad, drawn,
                             cfg.sft.drawn_share)
    val_set = ChunkSamples(val, chunk, convention, state_dim, wrist, pad) if val else None
    stats = dataset_statistics(
        [policy_gripper(d.actions, convention) for d in train],
        [d.states if d.states.shape[1] == state_dim else state_8_to_7(d.states)
         for d in train], default_unnorm_key(cfg))
    return train_set, val_set, stats, report


def run(cfg: Config, stop: threading.Event | None = None) -> int:
    """Train for ``sft.steps`` steps (resuming with ``run.resume``); 0 when done."""
    stop = stop or threading.Event()
    s, log_dir = cfg.sft, Path(cfg.run.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    device = pick_device(cfg.learner.device)
    policy = build_policy(cfg.model).to(device)
    wrist = policy.use_wrist  # as configured; a text-only token_ar policy reads none
    train_set, val_set, stats, report = load_samples(cfg, rng, wrist)
    key = default_unnorm_key(cfg)
    write_statistics(log_dir / "dataset_statistics.json", stats)
    if hasattr(policy, "norm"):  # a VLA predicts normalised actions: these statistics
        policy.norm = ActionNorm.from_stats(stats, str(log_dir), key, cfg.model.action_stats,
                                            cfg.model.kind == "qwen_oft" and
                                            cfg.model.binarize_gripper)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad],
                                  lr=s.lr, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: lr_factor(k, s.lr_warmup_steps, s.steps, s.min_lr_ratio))
    step = 0
    if cfg.run.resume:
        step = _restore(log_dir, policy, optimizer, scheduler, rng)
    writer = SummaryWriter(str(log_dir), purge_step=step + 1 if cfg.run.resume else None)
    log.info("behaviour cloning %s on %d samples (%d episodes; %d validation episodes), "
             "%d steps of %d", cfg.model.kind, len(train_set), len(train_set.demos),
             len(val_set.demos) if val_set else 0, s.steps, s.batch_size)
    began, shown, losses = time.monotonic(), time.monotonic(), []
    val_loss = float("nan")
    try:
        while step < s.steps and not stop.is_set():
            policy.train()
            batch = train_set.batch(rng.integers(len(train_set), size=s.batch_size), rng,
                                    s.random_shift)
            inputs = policy.prepare(batch.obs, device)
            loss = policy.bc_loss(inputs, torch.from_numpy(batch.actions).to(device),
                                  torch.from_numpy(batch.mask).to(device), s.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            writer.add_scalar("sft/train_loss", losses[-1], step)
            writer.add_scalar("sft/lr", optimizer.param_groups[0]["lr"], step)
            writer.add_scalar("sft/grad_norm", float(grad_norm), step)
            if val_set is not None and (step % s.val_every == 0 or step == s.steps):
                val_loss = validation_loss(policy, val_set, device, s.loss, s.batch_size)
                writer.add_scalar("sft/val_loss", val_loss, step)
            if step % s.checkpoint_every == 0 and step < s.steps:
                _save(log_dir, cfg, policy, optimizer, scheduler, step, rng, key)
            if time.monotonic() - shown >= cfg.run.progress_every_s or step == s.steps:
                log.info("sft step %d/%d | train loss %.4f | val loss %.4f | lr %.2e | "
                         "%.1f steps/s", step, s.steps, float(np.mean(losses)), val_loss,
                         optimizer.param_groups[0]["lr"], step / (time.monotonic() - began))
                shown, losses = time.monotonic(), []
    finally:
        if step >= s.steps and cfg.model.kind == "cnn_gaussian" and s.final_log_std:
            with torch.no_grad():
                policy.log_std.fill_(s.final_log_std)
        _save(log_dir, cfg, policy, optimizer, scheduler, step, rng, key)
        writer.close()
    (log_dir / "sft_summary.json").write_text(json.dumps({
        "steps": step, "train_samples": len(train_set),
        "train_episodes": len(train_set.demos),
        "val_episodes": len(val_set.demos) if val_set else 0, "final_val_loss": val_loss,
        "datasets": {"files": report.files, "demos": report.demos, "bad": report.bad},
        "unnorm_key": key}, indent=1))
    log.info("behaviour cloning done: %s (model.checkpoint=%s)", log_dir / "checkpoint.pt",
             log_dir / "checkpoint.pt")
    return 0 if step >= s.steps else 1


@torch.no_grad()
def validation_loss(policy, samples: ChunkSamples, device, kind: str, batch_size: int) -> float:
    """The mean loss over every validation sample (no augmentation)."""
    policy.eval()
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(samples)))
        batch = samples.batch(rows)
        loss = policy.bc_loss(policy.prepare(batch.obs, device),
                              torch.from_numpy(batch.actions).to(device),
                              torch.from_numpy(batch.mask).to(device), kind)
        total, count = total + float(loss) * len(rows), count + len(rows)
    return total / max(count, 1)


def _save(log_dir: Path, cfg: Config, policy, optimizer, scheduler, step: int,
          rng: np.random.Generator, key: str) -> None:
    state = {"model": policy.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "version": 0,
             "incarnation": cfg.run.incarnation, "kind": "sft", "unnorm_key": key,
             "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
             "config": to_dict(cfg)}
    checkpoint.save_state(log_dir, state, {"version": step, "incarnation": cfg.run.incarnation,
                                           "kind": "sft"})
    log.info("checkpoint: step %d in %s", step, log_dir / checkpoint.CHECKPOINT)


def _restore(log_dir: Path, policy, optimizer, scheduler, rng: np.random.Generator) -> int:
    path = log_dir / checkpoint.CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        rng.bit_generator.state = state["rng"]["numpy"]
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"cannot resume behaviour cloning from {path}: "
                                         f"{type(exc).__name__}: {exc}") from exc
    log.info("resumed behaviour cloning from %s at step %d", path, state["step"])
    return int(state["step"])
