"""The actor process: E envs in S pipeline stages, talking to servers and the learner.

The actor registers at the learner's rendezvous first: its Roster says where the
learner's trajectory socket and the inference servers are (and heartbeats keep it
current). Every stage always has one request in flight; while stage A waits for its
chunk, the replies of the other stages are executed. A request unanswered for
``actor.request_retry_s`` goes again to another server (:class:`ServerPool`). Finished
episodes go to the learner through an :class:`Outbox` and are resent until acknowledged;
at exit the actor waits for the outstanding acks and reports how many it delivered.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from actors.executor import StageExecutor
from actors.outbox import Outbox
from actors.recorder import EpisodeRecorder
from actors.servers import ServerPool
from configs import Config, ConfigError
from envs import eval_init_states, make_env, observation_fields, planned_init_states
from profiling.recorder import make_profiler
from links import wiring
from protocol.codec import ProtocolError
from protocol.endpoint import Endpoint
from protocol.ids import IdSource
from protocol.messages import (
    ActorDone, ActorHello, ErrorReply, EvalRound, ObsRequest, StopActors, TrajectoryAck,
)
from links.registration import Registration, Retired

log = logging.getLogger(__name__)
FLUSH_RESEND_S = 2.0


class ActorError(RuntimeError):
    """The actor cannot go on (a server rejected its requests, or none answers)."""


@dataclass
class InFlight:
    """A request awaiting its reply."""

    stage: int
    server: int
    sent: float  # monotonic: last sent (to ``server``)
    first_sent: float  # monotonic: first sent, to any server
    request: ObsRequest


def run(cfg: Config, index: int = 0, ctx: zmq.Context | None = None,
        stop: threading.Event | None = None) -> int:
    """Act until the learner says stop (or ``stop`` is set); deliver every finished episode."""
    stop = stop or threading.Event()
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    a = cfg.actor
    name = f"actor-{index}"
    client = Registration(ctx, cfg, "actor", index)  # heartbeats from its own thread
    servers = ServerPool(ctx, cfg, index)
    learn = env = actor = None
    try:
        servers.update(client.wait(stop))
        while cfg.inference_needed and not servers.endpoints and not stop.is_set():
            got = client.poll()
            if got is not None:
                servers.update(got)
            time.sleep(0.05)
        roster = client.roster
        learn = wiring.actor_learner_endpoint(ctx, cfg, index, roster.trajectory_address)
        envs, group_size = ((cfg.eval.envs_per_actor, 1) if cfg.is_eval_actor(index)
                            else (a.envs_per_actor, a.group_size))
        try:
            env = make_env(cfg.env, envs, group_size, cfg.model.action_dim,
                           group_offset=index * (envs // group_size))
        except ValueError as exc:  # a config the env refuses: restarting cannot help
            raise ConfigError(str(exc)) from exc
        if env.state_dim != cfg.model.state_dim:
            raise ConfigError(f"env.kind={cfg.env.kind} has {env.state_dim}-D states but "
                             f"model.state_dim={cfg.model.state_dim}; set model.state_dim")
        if env.chunk_size and cfg.actions_per_chunk % env.chunk_size:
            raise ConfigError(f"env.kind={cfg.env.kind} steps chunks of a multiple of "
                              f"{env.chunk_size} actions; set actor.actions_per_chunk to one")
        actor = Actor(cfg, index, env, servers, learn, client)
        try:
            actor.act(stop)
        except Exception:
            actor.flush(raise_on_timeout=False)  # what was finished still gets delivered
            raise
        actor.flush()
        return 0
    finally:
        if actor is not None:
            actor.close_hooks()
            actor.write_summary(Path(cfg.run.log_dir) / f"{name}.json")
            actor.write_profile()
        servers.close()
        client.close()
        if learn is not None:
            learn.close()
        if env is not None:
            env.close()
        if own_ctx:
            ctx.term()


class Actor:
    """The actor's loop, with its stages, in-flight requests and outbox.

    A training actor runs random initial states forever; an eval or record actor runs its
    share of a fixed plan once; an evaluation actor (``cfg.is_eval_actor``) waits for the
    learner's :class:`EvalRound` and then runs its share of the evaluation trials,
    deterministically, with weights of at least the round's version. With a scripted
    expert (recording) no server is asked: the expert acts in this process."""

    def __init__(self, cfg: Config, index: int, env, servers: ServerPool, learn: Endpoint,
                 client: Registration | None = None):
        a = cfg.actor
        self.cfg, self.index, self.env = cfg, index, env
        self.servers, self.learn, self.client = servers, learn, client
        self.ids = IdSource(index, cfg.incarnation)
        self.eval_actor = cfg.is_eval_actor(index)
        self.deterministic = a.deterministic or self.eval_actor
        self.hooks, self.writer = self._hooks(cfg, env, index)
        self.expert = None
        if cfg.run.mode == "record" and cfg.record.source == "expert":
            from experts import make_expert

            self.expert = make_expert(cfg.env, env)
        self.round_key, self.rounds, self.min_version, self.stale_replies = None, 0, 0, 0
        self.stages: list[StageExecutor] = []
        if not self.eval_actor:  # an evaluation actor builds its stages for each round
            self._build_stages(self._init_states(cfg, index, env))
        self.outbox = Outbox(a.max_unacked_episodes, a.resend_after_s)
        self.inflight: dict[int, InFlight] = {}  # request_id -> what awaits its reply
        self.next_request = 0
        self.retries = 0
        # Pipelining, counted: chunks executed, and those executed while another stage's
        # request was in flight (its inference overlapping this stage's stepping).
        self.chunks_executed = self.chunks_overlapped = 0
        self.registrations = 1  # registrations seen (the first was before acting)
        self.learner_stopped = False
        self.done_acked = False
        self.prof = make_profiler(cfg, f"actor-{index}")
        self.started_at = self.stopped_at = 0.0  # wall clock: first request, end of acting

    @staticmethod
    def _hooks(cfg: Config, env, index: int) -> tuple[list, object]:
        """Videos of chosen episodes; in a record run, every episode to disk."""
        hooks, writer = [], None
        filming = cfg.video.train_every if cfg.run.mode == "train" else cfg.video.eval_per_task
        if filming and not cfg.is_eval_actor(index):
            hooks.append(EpisodeRecorder(cfg, env, index))
        if cfg.run.mode == "record":
            from actors.demos import make_demo_recorder

            recorder, writer = make_demo_recorder(cfg, env)
            hooks.append(recorder)
        return hooks, writer

    def _build_stages(self, next_init_state) -> None:
        cfg, env = self.cfg, self.env
        per_stage = env.num_envs // env.group_size // cfg.actor.pipeline_stages
        self.stages = [
            StageExecutor(env, list(range(s * per_stage, (s + 1) * per_stage)),
                          cfg.actions_per_chunk, self.ids, next_init_state, self.hooks,
                          resample_failed_resets=cfg.run.mode == "train" and not self.eval_actor,
                          record_final_obs=cfg.learner.algorithm == "ppo" and
                          not self.eval_actor,
                          expert=self.expert, action_noise=cfg.record.action_noise
                          if cfg.run.mode == "record" else 0.0,
                          seed=cfg.run.seed * 1000 + self.index * 10 + s)
            for s in range(cfg.actor.pipeline_stages)]

    @staticmethod
    def _init_states(cfg: Config, index: int, env):
        """Training: random states from the env. Eval and record: this actor's share of
        the plan, in task order (a LIBERO env slot then builds each task's simulator
        once); an evaluation actor's share of the evaluation trials."""
        if cfg.is_eval_actor(index):
            trials = cfg.eval.trials_during_training or cfg.eval.num_trials
            plan = eval_init_states(cfg.env, trials, cfg.eval.first_state)
            share = plan[index - cfg.actor.num_actors::cfg.eval.actors]
        elif cfg.run.mode == "train":
            rng = np.random.default_rng([cfg.run.seed, index])
            return lambda group: env.sample_init_state(group, rng)
        else:
            share = planned_init_states(cfg)[index::cfg.actor.num_actors]
        jobs = collections.deque(share)
        return lambda group: jobs.popleft() if jobs else None

    def _start_round(self, msg: EvalRound) -> None:
        """An evaluation round: every trial of this actor's share, from now on."""
        # The learner resends its order after every hello; a restarted learner counts
        # its rounds from 0 again, so a round is known by the learner's start too.
        key = (self.client.roster.learner_start if self.client else 0, msg.round)
        if key == self.round_key:
            return
        if any(not s.idle for s in self.stages):
            log.warning("actor %d: round %d starts before the previous one finished here",
                        self.index, msg.round)
        self.round_key, self.min_version = key, msg.policy_version
        self.rounds += 1
        self.inflight.clear()  # replies to the old round's requests are ignored
        self._build_stages(self._init_states(self.cfg, self.index, self.env))
        log.info("actor %d: evaluation round %d (weights >= version %d)", self.index,
                 msg.round, msg.policy_version)
        for s in range(len(self.stages)):
            self._request(s)

    def close_hooks(self) -> None:
        """Finish writing demonstrations (a record run)."""
        if self.writer is not None:
            self.writer.close()

    # --- acting -------------------------------------------------------------------------
    def act(self, stop: threading.Event) -> None:
        """Step the stages until the learner says stop."""
        self._hello()
        self.started_at = time.time()
        if self.expert is None:
            for s in range(len(self.stages)):
                self._request(s)
        try:
            (self._loop if self.expert is None else self._loop_expert)(stop)
        finally:
            self.stopped_at = time.time()

    def _loop_expert(self, stop: threading.Event) -> None:
        """Recording with a scripted expert: each stage in turn runs a chunk, no server."""
        while not (stop.is_set() or self.learner_stopped):
            self._tick()
            self._service_learner(0)
            if self.outbox.full:
                self._service_learner(50)
                continue
            live = [stage for stage in self.stages if not stage.idle]
            if not live:
                self._service_learner(50)
            for stage in live:
                stage.observe()
                began = time.time()
                self._deliver(stage.execute(None, None, None, 0))
                self.prof.add("env_step", began, time.time())

    def _loop(self, stop: threading.Event) -> None:
        prof = self.prof
        while not (stop.is_set() or self.learner_stopped):
            self._tick()
            if not self.inflight:  # every stage idle: evaluation trials all done
                self._service_learner(50)
                continue
            self._service_learner(0)
            if self.outbox.full:  # backpressure: wait for the learner instead of stepping
                began = time.time()
                self._service_learner(50)
                prof.add("blocked_by_learner", began, time.time())
                # Replies wait unread meanwhile; that time is not the servers' fault.
                self._defer(time.time() - began)
                continue
            began = time.time()  # every stage waits for its chunk: the actor is idle
            ready = self.servers.ready(50)
            prof.add("wait_action", began, time.time())
            for server, endpoint in ready:
                self._on_reply(server, endpoint)
            self._retry_late()

    def _tick(self) -> None:
        if self.client is None:
            return
        roster = self.client.poll()
        if roster is not None:
            self.servers.update(roster)
        if self.client.registrations > self.registrations:  # a restarted learner: say hello
            self.registrations = self.client.registrations
            self._hello()

    def _hello(self) -> None:
        a = self.cfg.actor
        self.learn.send(ActorHello(self.index, self.env.num_envs, a.group_size))

    def _defer(self, seconds: float) -> None:
        """Time the actor spent elsewhere does not count against the servers."""
        for f in self.inflight.values():
            f.sent += seconds
            f.first_sent += seconds

    def _retry_late(self) -> None:
        a, now = self.cfg.actor, time.monotonic()
        for rid, f in list(self.inflight.items()):
            if now - f.first_sent > a.request_timeout_s:
                raise ActorError(f"no action reply within actor.request_timeout_s="
                                 f"{a.request_timeout_s:.0f}s; is an inference server running?")
            if now - f.sent > a.request_retry_s:
                # Again, under a new id (a late answer to the old one is ignored), to
                # another server when there is one.
                self.servers.suspect(f.server)
                del self.inflight[rid]
                self.retries += 1
                self._send_request(f.stage, f.request, f.first_sent, avoid=f.server)

    def _request(self, stage: int) -> None:
        if self.stages[stage].idle:
            return
        with self.prof.span("observe_send", stage=stage):  # rendering + encoding
            obs = self.stages[stage].observe()
            self._send_request(stage, observation_fields.to_request(obs, -1, self.deterministic),
                               time.monotonic())

    def _send_request(self, stage: int, request: ObsRequest, first_sent: float,
                      avoid: int = -1) -> None:
        rid = self.next_request
        self.next_request += 1
        request = dataclasses.replace(request, request_id=rid)
        server = self.servers.choose(avoid)
        self.servers.send(server, request)
        self.inflight[rid] = InFlight(stage, server, time.monotonic(), first_sent, request)

    def _on_reply(self, server: int, endpoint: Endpoint) -> None:
        try:
            reply = endpoint.recv().msg
        except ProtocolError as err:
            log.warning("actor %d dropped a malformed reply: %s", self.index, err)
            return
        if isinstance(reply, ErrorReply):
            raise ActorError(f"inference server {server} rejected request {reply.request_id}: "
                             f"{reply.code}: {reply.message}")
        f = self.inflight.pop(reply.request_id, None)
        if f is None:  # an answer to a request that was sent again meanwhile
            log.debug("actor %d: late reply to request %d ignored", self.index,
                      reply.request_id)
            return
        self.servers.answered(server)
        if reply.policy_version < self.min_version:  # the round's weights not there yet
            self.stale_replies += 1
            self._send_request(f.stage, f.request, f.first_sent)
            return
        stage = f.stage
        self.chunks_executed += 1
        self.chunks_overlapped += any(g.stage != stage for g in self.inflight.values())
        began, wall = time.monotonic(), time.time()
        self.prof.sample("action_rtt_ms", (began - f.sent) * 1e3, wall)
        steps_before = self.stages[stage].env_steps
        episodes = self.stages[stage].execute(reply.actions, reply.logprobs, reply.values,
                                              reply.policy_version)
        # Time spent stepping here (simulator rebuilds, videos) is not the servers' delay.
        spent = time.monotonic() - began
        steps = self.stages[stage].env_steps - steps_before
        self.prof.add("env_step", wall, wall + spent, stage=stage, envs=len(reply.actions))
        self.prof.sample("env_steps", steps, wall + spent)
        self._defer(spent)
        self._deliver(episodes)
        self._request(stage)

    def _deliver(self, episodes) -> None:
        for ep in episodes:
            if ep.env_error:
                log.warning("actor %d: episode %d ended by a simulator error: %s",
                            self.index, ep.episode_id, ep.env_error)
            self.outbox.add(ep)
        self._send_due()

    # --- delivery -------------------------------------------------------------------
    def _send_due(self, resend_after_s: float | None = None) -> None:
        due = self.outbox.due(time.monotonic(), resend_after_s)
        for k, ep in enumerate(due):
            try:
                self.learn.send(ep, flags=zmq.NOBLOCK)
            except zmq.Again:  # the socket is full: this one and the rest go out later
                for rest in due[k:]:
                    self.outbox.unsend(rest.episode_id)
                break

    def _service_learner(self, timeout_ms: float) -> None:
        while self.learn.poll(timeout_ms):
            timeout_ms = 0
            try:
                msg = self.learn.recv().msg
            except ProtocolError as err:
                log.warning("actor %d dropped a malformed message: %s", self.index, err)
                continue
            if isinstance(msg, TrajectoryAck):
                if msg.episode_id == -1:
                    self.done_acked = True
                else:
                    self.outbox.ack(msg.episode_id)
            elif isinstance(msg, EvalRound) and self.eval_actor:
                self._start_round(msg)
            elif isinstance(msg, StopActors):  # told again until it reports done
                if not self.learner_stopped:
                    log.info("actor %d: learner says stop (%s)", self.index, msg.reason)
                self.learner_stopped = True
            elif isinstance(msg, ErrorReply) and msg.code == "retired":
                raise Retired(f"actor {self.index}: {msg.message}")
            elif isinstance(msg, ErrorReply):
                log.error("actor %d: learner rejected a message: %s", self.index, msg.message)
        self._send_due()

    def flush(self, raise_on_timeout: bool = True) -> None:
        """Deliver every finished episode, then report done; bounded by flush_timeout_s."""
        deadline = time.monotonic() + self.cfg.actor.flush_timeout_s
        while self.outbox.pending and time.monotonic() < deadline:
            self._service_learner(50)
            self._tick()
            # An ack that has not come within FLUSH_RESEND_S will not: resend now rather
            # than after resend_after_s (the learner acks a duplicate, never counts it).
            self._send_due(FLUSH_RESEND_S)
        if self.outbox.pending and not raise_on_timeout:
            log.error("actor %d: %d episodes unacknowledged at exit", self.index,
                      len(self.outbox.pending))
            return
        if self.outbox.pending:
            raise ActorError(f"{len(self.outbox.pending)} episodes still unacknowledged after "
                             f"actor.flush_timeout_s={self.cfg.actor.flush_timeout_s:.0f}s; "
                             "is the learner alive?")
        self.learn.send(ActorDone(self.index, len(self.outbox.acked), self.env_steps))
        while not self.done_acked and time.monotonic() < deadline + 5:
            self._service_learner(50)
            self._tick()

    @property
    def env_steps(self) -> int:
        """Simulator steps taken so far by all of this actor's stages."""
        return sum(s.env_steps for s in self.stages)

    def write_profile(self) -> None:
        """The profile of this actor, with the bytes each of its links carried."""
        sent, received = self.servers.bytes
        self.prof.count("bytes_sent:actor->inference", sent)
        self.prof.count("bytes_received:actor->inference", received)
        self.prof.count("bytes_sent:actor->learner", self.learn.bytes_sent)
        self.prof.count("bytes_received:actor->learner", self.learn.bytes_received)
        self.prof.write(self.cfg.run.log_dir)

    def write_summary(self, path: Path) -> None:
        """Delivered episode ids and counters, for the run's records and tests."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "episodes_delivered": len(self.outbox.acked),
            "episode_id_ranges": self.outbox.acked.ranges(),
            "unacknowledged": sorted(self.outbox.pending), "resends": self.outbox.resends,
            "env_steps": self.env_steps, "rejected": self.servers.rejected_counts(),
            "request_retries": self.retries, "chunks_executed": self.chunks_executed,
            "chunks_overlapped": self.chunks_overlapped, "incarnation": self.cfg.incarnation,
            "eval_rounds": self.rounds, "stale_replies_asked_again": self.stale_replies,
            "demos_written": self.writer.written if self.writer else 0,
            "demos_failed": self.writer.failed if self.writer else 0,
            "demo_writer_waited_s": self.writer.waited_s if self.writer else 0.0,
            "acting_s": max(0.0, self.stopped_at - self.started_at)}))
