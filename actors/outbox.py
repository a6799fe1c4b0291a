"""Acknowledged delivery (pure): episodes stay here until the learner acknowledges them."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from protocol.idset import IdSet
from protocol.messages import Trajectory


@dataclass
class Outbox:
    """Unacknowledged episodes, oldest first, each with the time it was last sent.

    Full at ``capacity``: the actor then waits for acks instead of stepping, so a slow
    learner slows the actors instead of growing memory.
    """

    capacity: int
    resend_after_s: float
    pending: "OrderedDict[int, list]" = field(default_factory=OrderedDict)
    acked: IdSet = field(default_factory=IdSet)
    resends: int = 0

    @property
    def full(self) -> bool:
        """Whether ``capacity`` episodes are waiting for their acknowledgement."""
        return len(self.pending) >= self.capacity

    def add(self, ep: Trajectory) -> None:
        """Queue ``ep``; it is due to be sent at once."""
        self.pending[ep.episode_id] = [ep, None]

    def due(self, now: float, resend_after_s: float | None = None) -> list[Trajectory]:
        """Episodes never sent, or sent longer than ``resend_after_s`` (by default the
        outbox's) ago; marks them sent."""
        after = self.resend_after_s if resend_after_s is None else resend_after_s
        out = []
        for entry in self.pending.values():
            ep, sent = entry
            if sent is None or now - sent >= after:
                self.resends += sent is not None
                entry[1] = now
                out.append(ep)
        return out

    def unsend(self, episode_id: int) -> None:
        """The send did not go out (socket full): make it due again."""
        if episode_id in self.pending:
            self.pending[episode_id][1] = None

    def ack(self, episode_id: int) -> None:
        """The learner has it: forget it (a repeated ack is harmless)."""
        if self.pending.pop(episode_id, None) is not None:
            self.acked.add(episode_id)
