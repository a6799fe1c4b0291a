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
from inference_server.core import InferenceCore
from models import build_policy, pick_device
from protocol import wiring
from protocol.codec import ProtocolError
from protocol.endpoint import Endpoint
from protocol.messages import ErrorReply, ObsRequest
from protocol.weights import DistWeightReceiver, join_group

log = logging.getLogger(__name__)


def run(cfg: Config, index: int = 0, ctx: zmq.Context | None = None, weights_bus=None,
        stop: threading.Event | None = None) -> int:
    """Serve action chunks until the learner finishes (or ``stop`` is set)."""
    stop = stop or threading.Event()
    device = pick_device(cfg.inference.device)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model).to(device).eval()
    core = InferenceCore(policy, device, cfg.inference.temperature, cfg.model.state_dim)
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    endpoint = Endpoint(wiring.bind_inference_server(ctx, cfg, index), f"inference-{index}",
                        cfg.run.run_id, cfg.network.max_message_mb << 20,
                        expected=(ObsRequest,), routed=True)
    server = InferenceServer(cfg, core, endpoint)
    try:
        if weights_bus is not None:
            receiver = weights_bus.receiver(policy, device)
        else:
            receiver = DistWeightReceiver(policy, device, join_group(cfg, 1 + index, device))
        core.load(*receiver.wait_first(cfg.network.weights_timeout_s))
        log.info("inference server %d serving on %s (%s), weights version %d", index,
                 wiring.inference_address(cfg, index, bind=True), device, core.version)
        server.serve(receiver, stop, grace_s=cfg.actor.flush_timeout_s + 30)
        return 0
    finally:
        server.write_stats(Path(cfg.run.log_dir) / f"inference-{index}.json")
        endpoint.close()
        if own_ctx:
            ctx.term()


class InferenceServer:
    """The serving loop: receive, batch, forward, reply; new weights between batches."""

    def __init__(self, cfg: Config, core: InferenceCore, endpoint: Endpoint):
        self.core, self.endpoint = core, endpoint
        self.batcher = Batcher(cfg.inference.max_batch, cfg.inference.max_wait_ms / 1e3)
        self.requests = self.errors = 0

    def serve(self, receiver, stop: threading.Event, grace_s: float = 60.0) -> None:
        """Serve until the learner signals the end.

        ``stop`` (a signal) does not end serving at once: the learner, stopping too, still
        drains the actors and then ends the weights link; only if it does not within
        ``grace_s`` does the server leave on its own.
        """
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and stop.is_set():
                deadline = time.monotonic() + grace_s
            update = receiver.poll()
            if update is not None:  # between two batches: never mid-batch
                self.core.load(*update)
            if receiver.finished.is_set() and receiver.poll() is None:
                if receiver.error is not None:
                    raise RuntimeError(f"weight receiver failed: {receiver.error}")
                log.info("learner finished; inference server stopping")
                return
            self.step(timeout_s=self.batcher.wait_s(time.monotonic(), 0.1))

    def step(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for requests, then run a batch if one is due."""
        if self.endpoint.poll(timeout_s * 1e3):
            while self.endpoint.poll(0):  # take everything already queued
                self._receive()
                if self.batcher.rows >= self.batcher.max_batch:
                    break
        if self.batcher.due(time.monotonic()):
            for peer, reply in self.core.answer(self.batcher.take()):
                self.endpoint.send(reply, peer)

    def _receive(self) -> None:
        try:
            got = self.endpoint.recv()
        except ProtocolError as err:
            self.errors += 1
            log.warning("rejected a request: %s", err)
            if err.peer:
                self.endpoint.send(ErrorReply(err.request_id, err.code, str(err)), err.peer)
            return
        problem = self.core.check(got.msg)
        if problem:
            self.errors += 1
            self.endpoint.send(ErrorReply(got.msg.request_id, "bad_request", problem), got.peer)
            return
        self.requests += 1
        self.batcher.add(Pending(got.peer, got.msg), time.monotonic())

    def write_stats(self, path: Path) -> None:
        """Served counts and the final policy version, for the run's records and tests."""
        core = self.core
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "policy_version": core.version, "requests": self.requests,
            "forward_passes": core.passes, "rows": core.rows,
            "mean_batch_rows": core.rows / max(core.passes, 1),
            "max_requests_per_pass": core.max_requests_per_pass,
            "rejected": self.errors, "rejected_by_code": dict(self.endpoint.rejected)}))
