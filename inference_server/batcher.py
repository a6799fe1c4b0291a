"""Request batching (pure): gather requests until ``max_batch`` rows or ``max_wait``."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.messages import ObsRequest


@dataclass
class Pending:
    """A request waiting for the next forward pass, with the peer to answer."""

    peer: bytes
    request: ObsRequest
    arrived: float = 0.0  # wall clock, for the profile's queueing time

    @property
    def rows(self) -> int:
        """Observation rows of the request (one per env)."""
        return len(self.request.task_descriptions)


@dataclass
class Batcher:
    """Holds requests; a batch is due when it is full or the oldest has waited enough."""

    max_batch: int
    max_wait_s: float
    queue: list = field(default_factory=list)
    first_at: float = 0.0

    def add(self, item: Pending, now: float) -> None:
        """Queue ``item``, arrived at ``now``; the first of a batch starts its wait."""
        if not self.queue:
            self.first_at = now
        self.queue.append(item)

    @property
    def rows(self) -> int:
        """Rows queued, over every request."""
        return sum(p.rows for p in self.queue)

    def due(self, now: float) -> bool:
        """A forward pass should run now."""
        return bool(self.queue) and (self.rows >= self.max_batch
                                     or now - self.first_at >= self.max_wait_s)

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long to wait for more requests before the batch is due."""
        if not self.queue:
            return idle_s
        return max(0.0, self.first_at + self.max_wait_s - now)

    def take(self) -> list[Pending]:
        """Requests for one forward: whole requests, up to ``max_batch`` rows (at least one)."""
        batch, rows = [], 0
        while self.queue and (not batch or rows + self.queue[0].rows <= self.max_batch):
            item = self.queue.pop(0)
            batch.append(item)
            rows += item.rows
        return batch
