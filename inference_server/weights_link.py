"""The inference server's link to the learner: its registration and its weights.

The server registers at the learner's rendezvous, then joins the weights group the
Roster names and receives the current weights before it serves. If the learner goes
(the weights group breaks), the server keeps serving the weights it has and registers
again; a learner that comes back (resumed from its checkpoint) answers with a new group.
The learner's end-of-run message ends serving; silence longer than
``network.learner_wait_s`` raises :class:`~links.registration.LearnerGone`.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from configs import Config
from links.registration import LearnerGone, Registration
from links.weights import DistWeightReceiver, WeightReceiver, join_group

log = logging.getLogger(__name__)


class WeightsLink:
    """Registration plus the current weight receiver (``receiver``)."""

    def __init__(self, cfg: Config, index: int, policy: torch.nn.Module, device: torch.device,
                 client: Registration, bus=None, prof=None):
        self.cfg, self.index, self.policy, self.device = cfg, index, policy, device
        self.client, self.bus, self.prof = client, bus, prof
        self.generation = -1
        self.receiver: WeightReceiver | None = None
        self.lost_since_logged = False

    def start(self, stop: threading.Event) -> None:
        """Register and start receiving (the first weights arrive on ``receiver``)."""
        self.client.wait(stop)
        if self.bus is not None:
            self.receiver = self.bus.receiver(self.policy, self.device)
        else:
            self._join(self.client.generation)

    def wait_first(self, stop: threading.Event) -> tuple[int, dict]:
        """The first weights (heartbeating meanwhile; a failed join registers again)."""
        while not stop.is_set():
            self.tick()
            got = self.receiver.poll()
            if got is not None:
                return got
            time.sleep(0.01)
        raise LearnerGone("stopped before the first weights arrived")

    def _join(self, generation: int) -> None:
        self.generation = generation
        cfg, index, device = self.cfg, self.index, self.device
        self.receiver = DistWeightReceiver(
            self.policy, device, lambda layout: join_group(cfg, index, generation, device, layout),
            self.prof)

    def tick(self) -> None:
        """Heartbeat; after a lost learner, register again and join the new group."""
        self.client.poll()  # raises LearnerGone / Retired
        if self.bus is not None:
            return
        generation = self.client.generation
        if generation >= 0 and generation != self.generation:
            if self.lost_since_logged:  # it was lost: the learner answered a new Register
                log.info("inference server %d: the learner is back (weights group %d)",
                         self.index, generation)
                self.lost_since_logged = False
            self._join(generation)
            return
        r = self.receiver
        if r.finished.is_set() and r.error is not None and not self.lost_since_logged:
            log.warning("inference server %d: weights link lost (%s); serving the weights it "
                        "has, registering again", self.index,
                        str(r.error).splitlines()[0] if str(r.error) else type(r.error).__name__)
            self.lost_since_logged = True
            self.client.reregister(self.generation)
