"""The actor's inference servers: one DEALER each, and which one gets the next request.

The Roster from the learner's rendezvous says where the servers are; a server that
(re)registers is connected (again). A request goes to the server with the fewest of this
actor's requests in flight, among those not under suspicion; a server whose request went
unanswered for ``actor.request_retry_s`` is suspected until it answers or registers anew,
and the request goes again to another server (or, alone, to the same one).
"""

from __future__ import annotations

import logging
import time

import zmq

from configs import Config
from links import wiring
from protocol.endpoint import Endpoint
from protocol.messages import Roster

log = logging.getLogger(__name__)


class ServerPool:
    """Endpoints to every registered server, with their load and health."""

    def __init__(self, ctx: zmq.Context, cfg: Config, actor: int):
        self.ctx, self.cfg, self.actor = ctx, cfg, actor
        self.endpoints: dict[int, Endpoint] = {}
        self.addresses: dict[int, str] = {}
        self.incarnations: dict[int, int] = {}
        self.outstanding: dict[int, int] = {}
        self.suspected: dict[int, float] = {}  # server -> when it was suspected
        self.poller = zmq.Poller()
        self.retired_bytes = [0, 0]  # traffic of endpoints closed (for the profile)
        self.rejected: dict = {}  # rejections counted by endpoints since closed

    def update(self, roster: Roster) -> None:
        """Connect servers that appeared or moved; trust again those that restarted."""
        for i, (address, incarnation) in enumerate(zip(roster.inference_addresses,
                                                       roster.inference_incarnations)):
            if not address:
                continue
            if self.addresses.get(i) != address:
                self._close(i)
                self.endpoints[i] = wiring.actor_inference_endpoint(self.ctx, self.cfg,
                                                                    self.actor, address)
                self.poller.register(self.endpoints[i].sock, zmq.POLLIN)
                self.addresses[i], self.outstanding[i] = address, 0
                log.info("actor %d: inference server %d at %s", self.actor, i, address)
            if self.incarnations.get(i, int(incarnation)) != int(incarnation):
                self.suspected.pop(i, None)  # a new start: worth trying again
                log.info("actor %d: inference server %d restarted", self.actor, i)
            self.incarnations[i] = int(incarnation)

    def _close(self, i: int) -> None:
        ep = self.endpoints.pop(i, None)
        if ep is not None:
            self.poller.unregister(ep.sock)
            self.retired_bytes[0] += ep.bytes_sent
            self.retired_bytes[1] += ep.bytes_received
            for code, count in ep.rejected.items():
                self.rejected[code] = self.rejected.get(code, 0) + count
            ep.sock.close(0)

    def choose(self, avoid: int = -1) -> int:
        """The server for the next request (``avoid``: one that just failed it)."""
        if not self.endpoints:
            raise RuntimeError("no inference server is registered")
        healthy = [i for i in self.endpoints if i not in self.suspected and i != avoid]
        if healthy:
            return min(healthy, key=lambda i: (self.outstanding[i], i))
        others = [i for i in self.endpoints if i != avoid] or list(self.endpoints)
        return min(others, key=lambda i: self.suspected.get(i, 0.0))  # longest suspected

    def send(self, server: int, msg) -> None:
        """Send ``msg`` to ``server`` and count it in flight there."""
        self.endpoints[server].send(msg)
        self.outstanding[server] += 1

    def answered(self, server: int) -> None:
        """``server`` answered a request: one fewer in flight, and no longer suspected."""
        self.outstanding[server] = max(0, self.outstanding.get(server, 0) - 1)
        self.suspected.pop(server, None)

    def suspect(self, server: int) -> None:
        """``server`` left a request unanswered: one fewer in flight, and suspected from now
        (logged when it was not already)."""
        self.outstanding[server] = max(0, self.outstanding.get(server, 0) - 1)
        if server not in self.suspected:
            log.warning("actor %d: inference server %d did not answer within "
                        "actor.request_retry_s=%.0fs; sending its requests elsewhere",
                        self.actor, server, self.cfg.actor.request_retry_s)
        self.suspected[server] = time.monotonic()

    def ready(self, timeout_ms: float) -> list[tuple[int, Endpoint]]:
        """The (server, endpoint) pairs with a message waiting."""
        events = dict(self.poller.poll(max(0, int(timeout_ms))))
        return [(i, ep) for i, ep in self.endpoints.items() if ep.sock in events]

    @property
    def bytes(self) -> tuple[int, int]:
        """(sent, received) payload bytes over every server endpoint, closed ones too."""
        return (self.retired_bytes[0] + sum(e.bytes_sent for e in self.endpoints.values()),
                self.retired_bytes[1] + sum(e.bytes_received for e in self.endpoints.values()))

    def rejected_counts(self) -> dict:
        """Messages rejected so far by every endpoint, closed ones too, by reason code."""
        out = dict(self.rejected)
        for ep in self.endpoints.values():
            for k, v in ep.rejected.items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        """Close every server endpoint."""
        for i in list(self.endpoints):
            self._close(i)
