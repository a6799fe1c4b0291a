"""The learner process: sockets, weights, TensorBoard and checkpoints around :class:`Learner`."""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import queue
import threading
import time
from pathlib import Path

import torch
import zmq
from torch.utils.tensorboard import SummaryWriter

from configs import Config, to_dict
from learner import checkpoint, data_parallel, sharding
from learner.batch import build_batch, group_verdict
from learner.core import Learner
from learner.eval_rounds import EvalRounds
from learner.stalls import StallReport
from learner.link import LearnerLinks
from links.weights import serving_dtype, state_bytes, synced_bytes
from models import build_policy, memory, pick_device
from profiling.recorder import OFF, make_profiler
from protocol.idset import IdSet
from protocol.messages import Trajectory

log = logging.getLogger(__name__)


def run(cfg: Config, ctx: zmq.Context | None = None, weights=None,
        stop: threading.Event | None = None) -> int:
    """Train for ``run.total_updates`` updates, then stop the actors and servers.

    ``weights`` is a weight sender (an in-process bus in --single-process mode); by
    default each inference server that registers joins a torch.distributed group. With
    ``run.resume`` the learner continues from ``log_dir/checkpoint.pt``.
    """
    stop = stop or threading.Event()
    if cfg.model.checkpoint:
        log.info("weights from model.checkpoint %s", cfg.model.checkpoint)
    learner = _build_learner(cfg)
    device = learner.device
    L = cfg.learner
    if L.decoupled and L.update_epochs == 1 and not L.global_batch_size:
        log.warning("learner.decoupled with one optimizer step per update: the ratio to the "
                    "proximal policy is always 1 and its clip never binds, so nothing limits "
                    "the drift from the behaviour (collapsed end to end, see RESULTS.md); set "
                    "learner.global_batch_size or update_epochs > 1")
    log_dir = Path(cfg.run.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    books = Books.resumed(log_dir, learner) if cfg.run.resume else Books()
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    links = LearnerLinks(cfg, ctx, "learner", device, books.received, weights)
    if L.num_ranks > 1:  # the other ranks join, then start from rank 0's (resumed) state
        learner.dp = data_parallel.join(cfg, 0, device, getattr(links.weights, "store", None))
        _start_rank(learner)
        log.info("data-parallel learner: rank 0 of %d (%s)", L.num_ranks, L.sharding)
    # On resume, events logged after the checkpoint's update are dropped from the view.
    writer = SummaryWriter(str(log_dir), purge_step=learner.version + 1 if cfg.run.resume
                           else None)
    prof = make_profiler(cfg, "learner")
    finished = False
    stalls = StallReport(log_dir / "stalls-learner.txt", cfg.learner.stall_report_s)
    try:
        stalls.tick()
        links.weights.send(learner.version, learner.serving)  # the resumed weights
        log.info("learner ready at version %d: logging to %s", learner.version, log_dir)
        finished = _train(cfg, learner, links, books, writer, stop, stalls, prof)
        return 0
    finally:
        stalls.tick()  # the wind-down's waits are bounded; a stall there is reported too
        prof.meta["trained_until"] = time.time()  # the profile's window ends here
        links.finish("training finished" if finished else "stopped")
        if cfg.learner.checkpoint:
            _final_save(cfg, learner, books)
        if learner.dp is not None:
            _release_ranks()
        _write_summary(log_dir, learner, links, books)
        endpoint = links.trajectories.endpoint
        prof.count("bytes_received:actor->learner", endpoint.bytes_received)
        prof.count("bytes_sent:learner->actor", endpoint.bytes_sent)
        prof.write(log_dir)
        writer.close()
        _plot(log_dir)
        links.close()
        stalls.close()
        if own_ctx:
            ctx.term()


def _release_ranks() -> None:
    """Tell the other learner ranks training is over (a rank already gone is logged)."""
    try:
        data_parallel.hand_out(None)
    except RuntimeError as exc:
        log.warning("could not tell the other learner ranks to stop: %s", exc)


def _final_save(cfg: Config, learner: Learner, books: "Books") -> None:
    """The checkpoint at the end; sharded, a rank that died makes its gather fail, which
    costs this checkpoint only (the last periodic one stays)."""
    try:
        books.save(cfg, learner)
    except RuntimeError as exc:
        if not learner.sharded:
            raise
        log.error("no final checkpoint: gathering the sharded state failed: %s", exc)


def _start_rank(learner: Learner) -> None:
    """Every rank after joining: start from rank 0's (resumed) state, then shard it
    (learner.sharding=fsdp)."""
    data_parallel.share_state(learner)
    if learner.sharded:
        sharding.shard_learner(learner)


def _build_learner(cfg: Config) -> Learner:
    """The configured policy on the learner's device, and its learner (every rank alike).
    A policy to be sharded stays on the CPU: only its shards move to the device."""
    device = pick_device(cfg.learner.device)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model)
    memory.check_role("learner", policy, cfg, device)
    if cfg.learner.sharding == "replicate":
        policy = policy.to(device)
    return Learner(policy, cfg.learner, cfg.inference.temperature, device, cfg.run.seed,
                   cfg.run.total_updates)


def run_rank(cfg: Config, rank: int) -> int:
    """Learner rank ``rank`` > 0 of a data-parallel learner: the same update as rank 0 on
    its share of every batch rank 0 hands out, until it hands out None."""
    learner = _build_learner(cfg)
    learner.dp = data_parallel.join(cfg, rank, learner.device)
    _start_rank(learner)
    log.info("learner rank %d of %d joined at version %d", rank, cfg.learner.num_ranks,
             learner.version)
    updates = 0
    while (order := data_parallel.receive()) is not None:
        kind, batch = order
        if kind == data_parallel.STEP:
            learner.step(batch)
            updates += 1
        else:  # rank 0 checkpoints a sharded state: this rank's part of the gather
            learner.full_state()
    log.info("learner rank %d: %d updates, now at version %d", rank, updates, learner.version)
    return 0


class Books:
    """What the learner keeps across updates and restarts: the ids of episodes received
    (shared with the receiver) and trained, how often an id was trained twice (0 is the
    contract), and the stale episodes dropped."""

    def __init__(self, received: IdSet | None = None, trained: IdSet | None = None,
                 counters: dict | None = None):
        self.received = received if received is not None else IdSet()
        self.trained = trained if trained is not None else IdSet()
        counters = counters or {}
        self.trained_twice = int(counters.get("trained_twice", 0))
        self.stale_dropped = int(counters.get("stale_dropped", 0))
        self.env_steps = int(counters.get("env_steps", 0))  # of training episodes received
        self.after_training = int(counters.get("after_training", 0))
        self.dropped_while_evaluating = int(counters.get("dropped_while_evaluating", 0))
        # Seconds trained by this run's learners so far (the run's max_duration_s is one
        # budget across a supervisor's restarts of the learner).
        self.trained_s = float(counters.get("trained_s", 0.0))

    @classmethod
    def resumed(cls, log_dir: Path, learner: Learner) -> "Books":
        """The books kept in the checkpoint in ``log_dir``; restores ``learner`` from it too."""
        state = checkpoint.restore(log_dir, learner)
        books = cls(IdSet.from_ranges(state.received), IdSet.from_ranges(state.trained),
                    state.counters)
        log.info("resumed from %s at version %d (incarnation %d): %d episodes received "
                 "before", log_dir / checkpoint.CHECKPOINT, state.version, state.incarnation,
                 len(books.received))
        return books

    def mark_trained(self, groups: list[list[Trajectory]]) -> None:
        """Mark the groups' episodes trained; one trained before counts in ``trained_twice``."""
        for group in groups:
            for ep in group:
                self.trained_twice += not self.trained.add(ep.episode_id)

    def counters(self) -> dict:
        """The counters a checkpoint keeps (``Books(counters=...)`` reads them back)."""
        return {"trained_twice": self.trained_twice, "stale_dropped": self.stale_dropped,
                "env_steps": self.env_steps, "after_training": self.after_training,
                "dropped_while_evaluating": self.dropped_while_evaluating,
                "trained_s": self.trained_s}

    def save(self, cfg: Config, learner: Learner, keep: bool = False) -> None:
        """Checkpoint ``learner`` with these books into ``run.log_dir`` (``keep``: also
        under ``checkpoints/``, :func:`learner.checkpoint.keep_version`)."""
        path = checkpoint.save(Path(cfg.run.log_dir), learner, cfg.run.incarnation,
                               self.counters(), self.received, self.trained, to_dict(cfg),
                               keep)
        log.info("checkpoint: version %d in %s", learner.version, path)


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them after big, varying batches,
    which shows as resident memory that swings by a batch's worth); no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Tally:
    """Running sums over episodes and updates since the last ``reset`` (no episode kept)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Zero the sums and restart the clock."""
        self.start = time.monotonic()
        self.episodes = self.successes = self.env_steps = self.samples = 0
        self.returns = self.rewards_per_step = self.chunk_rewards = 0.0
        self.chunks = self.stale = self.filtered = self.sim_failed = self.out_of_bounds = 0

    def add_group(self, group: list[Trajectory]) -> None:
        """Add the episodes of ``group`` to the sums."""
        for ep in group:
            self.episodes += 1
            self.successes += ep.success_once
            self.env_steps += ep.env_steps
            self.returns += ep.episode_return
            self.rewards_per_step += ep.episode_return / max(ep.env_steps, 1)
            self.chunk_rewards += float(ep.rewards.sum())
            self.chunks += len(ep.rewards)

    def drop(self, verdict: str, episodes: int) -> None:
        """Count a group not trained on (:func:`learner.batch.group_verdict`): stale ones
        by episode, the others by group."""
        if verdict == "stale":
            self.stale += episodes
        else:
            setattr(self, verdict, getattr(self, verdict) + 1)

    def metrics(self) -> dict:
        """The ``env/*`` scalars and throughput since the last reset."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        n = max(self.episodes, 1)
        return {
            "env/success_once": self.successes / n,
            "env/return": self.returns / n,
            "env/episode_len": self.env_steps / n,
            "env/reward": self.rewards_per_step / n,
            "rollout/rewards": self.chunk_rewards / max(self.chunks, 1),
            "perf/env_steps_per_s": self.env_steps / elapsed,
            "perf/samples_per_s": self.samples / elapsed,
            "learner/stale_episodes_dropped": self.stale,
            "learner/equal_groups_filtered": self.filtered,
            "learner/out_of_bounds_groups_filtered": self.out_of_bounds,
            "learner/sim_error_groups_dropped": self.sim_failed,
        }


def _train(cfg: Config, learner: Learner, links: LearnerLinks, books: Books, writer,
           stop, stalls: StallReport, prof=OFF) -> bool:
    """Train until ``cfg.update_limit`` updates or ``cfg.time_limit_s`` seconds; True
    when a limit was reached (False: stopped)."""
    L = cfg.learner
    update, shown = Tally(), Tally()  # since the last update / the last progress line
    saved_at = time.monotonic()  # the last checkpoint (or the start)
    groups = []
    weight_bytes = synced_bytes(learner.serving, serving_dtype(cfg))
    full_bytes = state_bytes(learner.serving.state_dict())
    log.info("weights: %.1f MB per update to each server%s", weight_bytes / 1e6,
             "" if weight_bytes == full_bytes else
             f" (the learner's state: {full_bytes / 1e6:.1f} MB; frozen parameters stay on "
             f"the servers, the rest is sent in inference.dtype={cfg.inference.dtype})")
    # A learner the supervisor restarted (run.start > 0) spends what is left of the run's
    # time limit; a run resumed by hand (--resume) gets the whole limit again.
    t0, before = time.monotonic(), books.trained_s if cfg.run.start > 0 else 0.0
    deadline = t0 + cfg.time_limit_s - before if cfg.time_limit_s else float("inf")
    rounds = EvalRounds(cfg, links.receiver, writer, Path(cfg.run.log_dir)) \
        if cfg.eval_rounds else None
    sent_version = learner.version  # run() sent these weights before training
    held: collections.deque = collections.deque()  # training groups held during a round
    while not stop.is_set():
        stalls.tick()
        books.trained_s = before + time.monotonic() - t0  # what a checkpoint keeps
        ended = learner.version >= cfg.update_limit or time.monotonic() >= deadline
        if ended and (rounds is None or rounds.finished_at(learner.version)):
            return True
        links.check()
        links.admit(learner.version, learner.serving)  # (re)started servers join here
        if rounds is not None:
            if ended and sent_version != learner.version:  # the final round's weights
                links.weights.send(learner.version, learner.serving)
                sent_version = learner.version
            rounds.tick(learner.version, books.env_steps, final=ended)
        # While a round runs with eval.pause_training (and after the last update) the
        # weights hold still: training groups wait (up to max_ready_groups, the rest are
        # dropped and counted), but the queue keeps moving for the evaluation episodes.
        paused = ended or (rounds is not None and rounds.running and cfg.eval.pause_training)
        if held and not paused:
            group = held.popleft()
        else:
            began = time.time()
            try:
                group = links.ready.get(timeout=0.2)
            except queue.Empty:
                prof.add("wait_data", began, time.time())
                continue
            prof.add("wait_data", began, time.time())
            if rounds is not None and rounds.owns(group):
                rounds.add(group)
                continue
            if paused:
                if ended:
                    books.after_training += len(group)
                elif len(held) < L.max_ready_groups:
                    held.append(group)
                else:
                    books.dropped_while_evaluating += len(group)
                continue
        books.env_steps += sum(ep.env_steps for ep in group)
        update.add_group(group)
        shown.add_group(group)
        for ep in group:
            prof.sample("policy_lag", learner.version - int(ep.policy_versions.min()))
        verdict = group_verdict(group, learner.version, L)
        if verdict:
            update.drop(verdict, len(group))
            if verdict == "stale":
                books.stale_dropped += len(group)
            continue
        groups.append(group)
        if len(groups) < L.groups_per_update:
            continue
        batch = build_batch(groups, L.algorithm, L.ppo.gamma, L.ppo.reward_level)
        books.mark_trained(groups)
        groups = []
        if learner.dp is not None:
            data_parallel.hand_out(batch)  # every rank steps on the same batch
        with prof.span("update", samples=len(batch)):
            metrics = learner.step(batch)
        if L.update_sleep_s:
            time.sleep(L.update_sleep_s)  # a deliberately slow learner (stale-data tests)
        prof.sample("samples", len(batch))
        update.samples += len(batch)
        shown.samples += len(batch)
        if learner.version % L.sync_every == 0 or learner.version == cfg.update_limit:
            with prof.span("broadcast", version=learner.version, bytes=weight_bytes):
                links.weights.send(learner.version, learner.serving)
            sent_version = learner.version
        metrics.update(update.metrics())
        metrics["perf/total_env_steps"] = books.env_steps
        for key, value in metrics.items():
            writer.add_scalar(key, value, learner.version)
        update.reset()
        by_count = bool(L.checkpoint_every) and learner.version % L.checkpoint_every == 0
        if by_count or \
                (L.checkpoint_every_s and time.monotonic() - saved_at >= L.checkpoint_every_s):
            with prof.span("checkpoint", version=learner.version):
                books.save(cfg, learner, keep=by_count and L.keep_checkpoints)
            saved_at = time.monotonic()
        if learner.version % 10 == 0:
            release_free_memory()
        if time.monotonic() - shown.start >= cfg.run.progress_every_s or \
                learner.version == cfg.update_limit:
            m = shown.metrics()
            log.info("update %d/%s | success_once %.2f | return %.2f | env steps/s %.0f | "
                     "samples/s %.0f | policy lag %.2f | stale dropped %d",
                     learner.version, _limit_text(cfg), m["env/success_once"],
                     m["env/return"], m["perf/env_steps_per_s"], m["perf/samples_per_s"],
                     metrics["rollout/policy_lag"], books.stale_dropped)
            shown.reset()
    return False


def _plot(log_dir: Path) -> None:
    """``curves.png`` beside the TensorBoard logs; a failure costs only the picture."""
    from learner.curves import plot_runs

    try:
        log.info("learning curves: %s", plot_runs({log_dir.name: log_dir},
                                                  log_dir / "curves.png"))
    except Exception as exc:  # noqa: BLE001 -- a plot must never fail a finished run
        log.warning("no learning-curve plot: %s: %s", type(exc).__name__, exc)


def _limit_text(cfg: Config) -> str:
    if cfg.profile.enabled:
        return f"({cfg.time_limit_s:.0f} s profile)"
    return str(cfg.run.total_updates)


def _write_summary(log_dir: Path, learner: Learner, links: LearnerLinks, books: Books) -> None:
    receiver, registry = links.receiver, links.registry
    summary = {
        "updates": learner.version,
        "episodes_trained": len(books.trained),
        "trained_episode_id_ranges": books.trained.ranges(),
        "trained_twice": books.trained_twice,
        "stale_episodes_dropped": books.stale_dropped,
        "received_during_final_eval_round": books.after_training,
        "dropped_while_evaluating": books.dropped_while_evaluating,
        "training_env_steps": books.env_steps,
        "episodes_received": len(receiver.received),
        "episode_id_ranges": receiver.received.ranges(),
        "duplicates": receiver.duplicates,
        "received_after_end": receiver.after_end,
        "evicted_from_unfinished_groups": receiver.assembler.evicted,
        "discarded_of_dead_incarnations": len(receiver.discarded),
        "discarded_episode_id_ranges": receiver.discarded.ranges(),
        "refused_of_dead_incarnations": receiver.refused_retired,
        "unacknowledged_before_registration": receiver.unregistered,
        "parked_dropped_unacknowledged": receiver.parked_dropped,
        "restarts_seen": registry.restarts,
        "actors_done": {str(k): v.episodes_sent for k, v in receiver.done.items()},
        "rejected_messages": dict(links.trajectories.endpoint.rejected),
        "rendezvous_rejected_messages": dict(links.rendezvous.endpoint.rejected),
        "curve_refused_connections": links.auth.refused if links.auth else 0,
    }
    (log_dir / "learner_summary.json").write_text(json.dumps(summary))
