"""The inference server process: a ROUTER socket around :class:`InferenceCore`."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import torch
import zmq

from configs import Config
from inference_server.batcher import Batcher, Pending
from inference_server.core import InferenceCore, cast_parameters
from models import build_policy, memory, pick_device
from profiling.recorder import OFF, make_profiler
from inference_server.weights_link import WeightsLink
from links import security, wiring
from links.weights import serving_dtype
from protocol.codec import ProtocolError
from protocol.endpoint import Endpoint
from protocol.messages import ErrorReply
from links.registration import Registration

log = logging.getLogger(__name__)


def run(cfg: Config, index: int = 0, ctx: zmq.Context | None = None, weights_bus=None,
        stop: threading.Event | None = None) -> int:
    """Register with the learner, receive its weights, then serve action chunks until the
    learner finishes (or ``stop`` is set)."""
    stop = stop or threading.Event()
    device = pick_device(cfg.inference.device)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model)
    memory.check_role("inference", policy, cfg, device)
    policy = policy.to(device).eval()
    cast_parameters(policy, serving_dtype(cfg))  # before the weights link reads its layout
    core = make_core(cfg, policy, device)
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    auth = security.start_authenticator(ctx, cfg) if own_ctx else None
    endpoint = wiring.inference_endpoint(ctx, cfg, index)
    server = InferenceServer(cfg, core, endpoint, make_profiler(cfg, f"inference-{index}"),
                             auth)
    client = Registration(ctx, cfg, "inference", index,
                          wiring.inference_address(cfg, index, bind=False))
    link = WeightsLink(cfg, index, policy, device, client, weights_bus, server.prof)
    try:
        link.start(stop)
        core.load(*link.wait_first(stop))
        log.info("inference server %d serving on %s (%s), weights version %d", index,
                 wiring.inference_address(cfg, index, bind=True), device, core.version)
        server.serve(link, stop, grace_s=cfg.actor.flush_timeout_s + 30)
        return 0
    finally:
        server.write_stats(Path(cfg.run.log_dir) / f"inference-{index}.json")
        server.write_profile(cfg.run.log_dir)
        client.close()
        endpoint.close()
        if auth is not None:
            auth.stop()
        if own_ctx:
            ctx.term()


def make_core(cfg: Config, policy, device: torch.device) -> InferenceCore:
    """The core of ``inference.backend``: the policy's own forward pass, or vLLM's."""
    i = cfg.inference
    if i.backend == "vllm":
        from inference_server.vllm_core import VLLMCore

        return VLLMCore(policy, cfg.model.model_path, i.temperature, cfg.model.state_dim,
                        cfg.run.seed, i.vllm)
    return InferenceCore(policy, device, i.temperature, cfg.model.state_dim,
                         serving_dtype(cfg))


class InferenceServer:
    """The serving loop: receive, batch, forward, reply; new weights between batches."""

    def __init__(self, cfg: Config, core: InferenceCore, endpoint: Endpoint, prof=None,
                 auth=None):
        self.core, self.endpoint = core, endpoint
        self.batcher = Batcher(cfg.inference.max_batch, cfg.inference.max_wait_ms / 1e3)
        self.requests = self.errors = 0
        self.older_updates_kept, self.behind_logged = 0, False
        self.prof = OFF if prof is None else prof
        self.auth = auth  # the process's CURVE authenticator, when CURVE is on

    def serve(self, link, stop: threading.Event, grace_s: float = 60.0) -> None:
        """Serve until the learner signals the end; ``link`` (a :class:`WeightsLink`, or
        anything with a ``receiver`` and a ``tick``) brings the weights.

        ``stop`` (a signal) does not end serving at once: the learner, stopping too, still
        drains the actors and then ends the weights link; only if it does not within
        ``grace_s`` does the server leave on its own.
        """
        deadline, receiver, poller = None, None, None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and stop.is_set():
                deadline = time.monotonic() + grace_s
            link.tick()
            if link.receiver is not receiver:  # a new weights group after a lost learner
                if receiver is not None:
                    log.info("inference server %d: back with the learner, serving version %d",
                             link.index, self.core.version)
                receiver = link.receiver
                poller = zmq.Poller()
                poller.register(self.endpoint.sock, zmq.POLLIN)
                poller.register(receiver.wake_fd, zmq.POLLIN)  # new weights wake an idle server
            receiver.clear_wake()
            update = receiver.poll()
            if update is not None:  # between two batches: never mid-batch
                self._apply(*update)
            if receiver.finished.is_set() and receiver.error is None and \
                    receiver.poll() is None:
                log.info("learner finished; inference server stopping")
                return
            self.step(self.batcher.wait_s(time.monotonic(), 0.1), poller)

    def _apply(self, version: int, state: dict) -> None:
        """Swap in weights ``version`` unless they are older than those served: a learner
        resumed from an earlier checkpoint sends those, and the served version never goes
        back (the current weights are kept until the learner is ahead of them)."""
        if version < self.core.version:
            if not self.behind_logged:
                log.warning("the learner sent version %d, older than the %d served: keeping "
                            "%d until it is ahead", version, self.core.version, self.core.version)
                self.behind_logged = True
            self.older_updates_kept += 1
            return
        with self.prof.span("weights_apply", version=version):  # serving pauses
            self.core.load(version, state)
        self.behind_logged = False

    def step(self, timeout_s: float, poller: zmq.Poller | None = None) -> None:
        """Wait up to ``timeout_s`` for requests (or what else ``poller`` watches), then
        run a batch if one is due."""
        if poller is None:
            ready = self.endpoint.poll(timeout_s * 1e3)
        else:
            ready = self.endpoint.sock in dict(poller.poll(max(0, int(timeout_s * 1e3))))
        if ready:
            while self.endpoint.poll(0):  # take everything already queued
                self._receive()
                if self.batcher.rows >= self.batcher.max_batch:
                    break
        if self.batcher.due(time.monotonic()):
            self._run_batch()

    def _run_batch(self) -> None:
        prof, waiting = self.prof, len(self.batcher.queue)
        batch = self.batcher.take()
        start = time.time()
        replies = self.core.answer(batch)
        for peer, reply in replies:
            self.endpoint.send(reply, peer)
        if prof.enabled:
            end = time.time()
            rows = sum(p.rows for p in batch)
            prof.add("forward", start, end, rows=rows, requests=len(batch))
            prof.sample("batch_rows", rows, end)
            prof.sample("queue_requests", waiting, start)  # waiting when the batch began
            for item in batch:
                prof.sample("queue_ms", (start - item.arrived) * 1e3, start)
                prof.sample("compute_ms", (end - start) * 1e3, end)

    def _receive(self) -> None:
        try:
            got = self.endpoint.recv()
        except ProtocolError as err:
            self.errors += 1
            self.endpoint.refuse(err, log)
            return
        problem = self.core.check(got.msg)
        if problem:
            self.errors += 1
            self.endpoint.send(ErrorReply(got.msg.request_id, "bad_request", problem), got.peer)
            return
        self.requests += 1
        self.batcher.add(Pending(got.peer, got.msg, time.time()), time.monotonic())

    def write_profile(self, log_dir: str) -> None:
        """The profile of this server, with the bytes its actor link carried, into ``log_dir``."""
        self.prof.count("bytes_received:actor->inference", self.endpoint.bytes_received)
        self.prof.count("bytes_sent:inference->actor", self.endpoint.bytes_sent)
        self.prof.write(log_dir)

    def write_stats(self, path: Path) -> None:
        """Served counts and the final policy version, for the run's records and tests."""
        core = self.core
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "policy_version": core.version, "requests": self.requests,
            "forward_passes": core.passes, "rows": core.rows,
            "mean_batch_rows": core.rows / max(core.passes, 1),
            "max_requests_per_pass": core.max_requests_per_pass,
            "rejected": self.errors, "rejected_by_code": dict(self.endpoint.rejected),
            "older_updates_kept_back": self.older_updates_kept,
            "curve_refused_connections": self.auth.refused if self.auth else 0}))
