"""The world model's state stages, trained after its predictor and success model
(:mod:`worldmodel.train` runs them): the state model (:mod:`worldmodel.state_model`), a
judge that reads no frame, and the state decoder (:mod:`worldmodel.decoder`), which draws
the frames of the states it predicts. Each trains afresh, or on from
``world_model.init``'s part of the same widths, and returns its held-out metrics for the
run's summary.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from configs import Config, ConfigError
from sft.data import hold_out
from worldmodel.data import Episode, Windows
from worldmodel.decoder import StateDecoder, decoder_psnr, state_frames, train_decoder
from worldmodel.evaluate import agreement_rates, generator_metrics
from worldmodel.metrics import roc_auc
from worldmodel.models import WorldModel
from worldmodel.probe import position_errors, train_probe
from worldmodel.ensemble import (StateEnsemble, as_ensemble, outcomes, proprio_error,
                                 shown_rollout)
from worldmodel.state_model import (StateEpisode, StateModel, load_state_episodes,
                                    train_state_model)

log = logging.getLogger(__name__)


def state_split(cfg: Config, proprio: bool = False
                ) -> tuple[list[StateEpisode], list[StateEpisode], dict[int, str]]:
    """The state model's training and held-out episodes of ``world_model.datasets``
    (``val_fraction``, seeded by ``run.seed``; the training episodes when none is held
    out), with the policy's proprioception when ``proprio``, and each episode's dataset
    (by ``id``)."""
    w = cfg.world_model
    episodes, source = [], {}  # id(episode) -> its entry of world_model.datasets
    for path in w.datasets:
        found, report = load_state_episodes([path], proprio)
        if report.bad or not found:
            also = ", and the policy's states with state.proprio" if proprio else ""
            raise ConfigError(f"world_model.state.steps={w.state.steps} needs recordings "
                              f"with simulator states (robosuite and LIBERO record runs keep "
                              f"them{also}): "
                              f"{report.bad[0] if report.bad else path + ' has none'}; "
                              f"record with those envs, or set world_model.state.steps=0")
        episodes += found
        source.update((id(e), path) for e in found)
    train, val = hold_out(episodes, w.val_fraction, w.max_episodes,
                          np.random.default_rng(cfg.run.seed + 1))
    return train, val or train, source


def train_state_stage(cfg: Config, model: WorldModel, writer, stop) -> dict:
    """Train ``model.state_model`` on the datasets' simulator states (afresh, or on from
    ``world_model.init``'s state model of the same widths, its normaliser kept, so that
    replays of what a policy did in the world model correct it where RL goes; with
    ``world_model.state.ensemble`` K > 1 a :class:`StateEnsemble` whose members each train
    on a bootstrap of the training episodes); its held-out metrics (each held-out episode
    replayed open loop from its first state; an ensemble's members alone too)."""
    w, rule = cfg.world_model, cfg.env.world_model
    train, val, source = state_split(cfg, w.state.proprio)
    proprio = train[0].proprio.shape[1] if w.state.proprio else 0
    tree = None
    if w.state.kinematics:
        from envs.sim_view import scene_kinematics

        tree = scene_kinematics(cfg.env, train[0].actions.shape[1], train[0].states.shape[1])
    members = [StateModel(train[0].states.shape[1], train[0].actions.shape[1],
                          w.state.hidden, proprio_dim=proprio, kinematics=tree,
                          hypotheses=w.state.hypotheses, window=w.state.horizon)
               for _ in range(w.state.ensemble)]
    fresh = members[0] if len(members) == 1 else StateEnsemble(members)
    theirs = model.state_model
    if theirs is not None and proprio and not theirs.proprio_dim and \
            {**theirs.spec(), "proprio_dim": proprio} == fresh.spec():
        # init's state model without the head: its weights and normaliser, a new head
        fresh.load_state_dict(theirs.state_dict(), strict=False)
        fresh.fit_proprio(train)
        theirs = fresh
    judge, on_from = _going_on(theirs, fresh, "state model", "world_model.state")
    model.state_model = judge
    members = as_ensemble(judge).members
    log.info("state model%s on %d episodes' simulator states (%d held out): %d steps%s",
             f", {len(members)} members each on a bootstrap of them," if len(members) > 1
             else "", len(train), len(val), w.state.steps,
             " on from world_model.init's" if on_from else "")
    for i, member in enumerate(members):
        rng = np.random.default_rng(cfg.run.seed + i)
        # one member: every training episode; K: each its own resample (PETS's bootstrap)
        data = train if len(members) == 1 else \
            [train[j] for j in rng.integers(len(train), size=len(train))]
        train_state_model(member, data, w.state.steps, w.state.horizon, w.state.batch_size,
                          w.state.lr, rng, _progress(cfg, writer, stop, i, len(members)),
                          fit=not on_from, kinematic_weight=w.state.kinematic_weight)
        if stop.is_set():
            break
    if stop.is_set():  # stopped part-way: the run ends without a state model
        model.state_model = None
        return {}
    best, real = outcomes(judge.cpu(), val)
    said = best >= rule.success_threshold
    by_set = {}
    for path in w.datasets:
        mine = np.array([source[id(e)] == path for e in val])
        by_set[path] = {"episodes": int(mine.sum()), "real_successes": int(real[mine].sum()),
                        "false": int((said & ~real)[mine].sum()),
                        "missed": int((~said & real)[mine].sum())}
    out = {"state_model_val_episodes": len(val), "state_model_by_dataset": by_set,
           **{f"state_model_{k}": v for k, v in
              verdict_rates(best, real, rule.success_threshold).items()}}
    if len(members) > 1:  # each member alone: what the lowest of them adds
        out["state_model_members"] = [verdict_rates(outcomes(m, val)[0], real,
                                                rule.success_threshold) for m in members]
        log.info("state model members alone, held out: ROC AUC %s; success on episodes "
                 "that really failed %s", " ".join(f"{v['auc']:.4f}" for v in
                                                   out["state_model_members"]),
                 " ".join(f"{v['success_on_real_failures']:.3f}"
                          for v in out["state_model_members"]))
    if judge.proprio_dim:  # what the env's proprio=state would hand the policy, how far off
        out["state_model_proprio_abs_error"] = proprio_error(judge, val)
        log.info("state model, held out: proprioception mean absolute error %s (recorded "
                 "states), %s (predicted open loop)", *(
                     " ".join(f"{e:.4f}" for e in out["state_model_proprio_abs_error"][k])
                     for k in ("recorded", "predicted")))
    log.info("state model, held out, open loop: ROC AUC %.4f; success at %.2f on episodes "
             "that really failed %.3f, that really succeeded %.3f", out["state_model_auc"],
             rule.success_threshold, out["state_model_success_on_real_failures"],
             out["state_model_success_on_real_successes"])
    return out


def verdict_rates(best: np.ndarray, real: np.ndarray, threshold: float) -> dict:
    """Open-loop verdicts (:func:`worldmodel.ensemble.outcomes`) against the real
    outcomes: ROC AUC, and the share called successes at ``threshold`` of the episodes
    that really failed and of those that really succeeded."""
    said = agreement_rates(best >= threshold, real)
    return {"auc": roc_auc(best, real),
            "success_on_real_failures": said["wm_success_on_real_failures"],
            "success_on_real_successes": said["wm_success_on_real_successes"]}


def _progress(cfg: Config, writer, stop, member: int, members: int):
    """The state model's ``on_step``: TensorBoard (member i's step k at i x steps + k), a
    line every ``run.progress_every_s``; True (stop) once ``stop`` is set."""
    steps = cfg.world_model.state.steps
    began = shown = time.monotonic()
    who = f" (member {member + 1}/{members})" if members > 1 else ""

    def progress(k: int, dynamics: float, success: float, *proprio: float) -> bool:
        nonlocal shown
        at = member * steps + k
        writer.add_scalar("state_model/dynamics_loss", dynamics, at)
        writer.add_scalar("state_model/success_loss", success, at)
        for q in proprio:
            writer.add_scalar("state_model/proprio_loss", q, at)
        if time.monotonic() - shown >= cfg.run.progress_every_s or k == steps:
            log.info("state-model step %d/%d%s | dynamics %.4f | success %.4f%s | %.1f "
                     "steps/s", k, steps, who, dynamics, success,
                     "".join(f" | proprio {q:.4f}" for q in proprio),
                     k / (time.monotonic() - began))
            shown = time.monotonic()
        return stop.is_set()

    return progress


def train_decoder_stage(cfg: Config, model: WorldModel, train: list[Episode],
                        val: list[Episode], writer, stop, device) -> dict:
    """Train ``model.decoder`` on the training episodes' frames and recorded simulator
    states (afresh, or on from ``world_model.init``'s decoder of the same width); its
    held-out PSNR from the real states and, with a state model, from the states it
    predicts open loop (each held-out episode from its first state)."""
    w = cfg.world_model
    try:
        data = state_frames(train)
    except ValueError as exc:
        raise ConfigError(f"world_model.decoder.steps={w.decoder.steps}: {exc}; record with "
                          "those envs, or set world_model.decoder.steps=0") from None
    decoder, on_from = _going_on(model.decoder, StateDecoder(
        data.states.shape[1], 3 * len(w.cameras), w.image_size, w.decoder.channels,
        w.decoder.frequencies), "decoder", "world_model.decoder")
    model.decoder = decoder
    began = shown = time.monotonic()
    log.info("state decoder on %d frames of %d episodes: %d steps%s", len(data), len(train),
             w.decoder.steps, " on from world_model.init's" if on_from else "")

    def progress(k: int, loss: float) -> bool:
        nonlocal shown
        writer.add_scalar("decoder/train_loss", loss, k)
        if time.monotonic() - shown >= cfg.run.progress_every_s or k == w.decoder.steps:
            log.info("decoder step %d/%d | loss %.4f | %.1f steps/s", k, w.decoder.steps,
                     loss, k / (time.monotonic() - began))
            shown = time.monotonic()
        return stop.is_set()

    train_decoder(decoder, data, w.decoder.steps, w.decoder.batch_size, w.decoder.lr,
                  np.random.default_rng(cfg.run.seed), progress, device, fit=not on_from)
    if stop.is_set():
        model.decoder = None
        return {}
    decoder.cpu()
    kept = [e for e in val if e.sim_states is not None and len(e.sim_states) > 1]
    held = state_frames(kept or val)
    out = {f"decoder_psnr_{k}": v for k, v in decoder_psnr(decoder, held.frames,
                                                            held.states).items()}
    if model.state_model is not None and kept:
        judge = model.state_model.cpu()
        with torch.no_grad():
            states = [shown_rollout(judge, torch.from_numpy(e.sim_states[:1]), torch.from_numpy(
                e.actions[None, :len(e.sim_states) - 1]))[0] for e in kept]
        predicted = np.concatenate([np.concatenate([e.sim_states[:1], s.numpy()])
                                    for e, s in zip(kept, states)])
        out.update({f"decoder_open_loop_psnr_{k}": v
                    for k, v in decoder_psnr(decoder, held.frames, predicted).items()})
    log.info("state decoder, held out: main camera PSNR %.2f dB on the moving pixels from "
             "the real states (%.2f whole frames), %.2f from the state model's open-loop "
             "states", out["decoder_psnr_moving"], out["decoder_psnr_all"],
             out.get("decoder_open_loop_psnr_moving", float("nan")))
    if model.state_model is None:
        return out
    # one chunk from each held-out step's recorded state, as the frame predictor is measured
    windows = Windows(val, w.condition_frames, cfg.actions_per_chunk)
    out.update({f"state_frames_{k}": v for k, v in
                generator_metrics(model.cpu(), windows, "cpu", frames="state").items()})
    log.info("frames from states, one chunk from held-out steps: PSNR on changed pixels "
             "%.2f dB (copy-last %.2f)", out["state_frames_val_psnr_changed"],
             out["state_frames_copy_last_psnr_changed"])
    if w.position_dims and w.probe_steps:
        probe = train_probe(train, w.position_dims, w.probe_steps,
                            np.random.default_rng(cfg.run.seed))
        for frames in ("generator", "state"):
            out.update({f"{frames}_frames_{k}": v for k, v in
                        position_errors(model, probe, windows, "cpu", frames=frames).items()})
        log.info("position read from held-out frames, gap to the real frame's reading: frames "
                 "from states %.4f, the frame predictor's %.4f, copy-last %.4f",
                 out["state_frames_val_position_gap"], out["generator_frames_val_position_gap"],
                 out["state_frames_copy_last_position_gap"])
    return out


def _going_on(theirs, fresh, part: str, section: str):
    """(``world_model.init``'s ``part`` ``theirs``, True) when it has ``fresh``'s spec, so
    that training goes on from its weights; (``fresh``, False) when init has none; a part
    of another spec is refused."""
    if theirs is None:
        return fresh, False
    if theirs.spec() != fresh.spec():
        raise ConfigError(f"world_model.init's {part} is {theirs.spec()}, {section} and the "
                          f"data give {fresh.spec()}: make them match")
    return theirs, True
