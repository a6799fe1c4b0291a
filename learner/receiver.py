"""The learner's receiving thread: acknowledges episodes exactly once, assembles groups.

It owns the learner's ROUTER socket. A new episode is recorded, acknowledged and added
to its group; a duplicate (an actor's resend whose ack was lost) is acknowledged again
but not counted. Complete groups go to a bounded queue; while it is full the thread
stops reading, so actors' unacknowledged outboxes fill and they wait (backpressure).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading

from protocol.codec import ProtocolError
from protocol.endpoint import Endpoint
from protocol.idset import IdSet
from protocol.messages import (
    ActorDone, ActorHello, StopActors, Trajectory, TrajectoryAck,
)

log = logging.getLogger(__name__)


class GroupAssembler:
    """Collects episodes by group id; hands out a group once all G have arrived."""

    def __init__(self):
        self.partial: dict[int, list[Trajectory]] = {}

    def add(self, ep: Trajectory) -> list[Trajectory] | None:
        """Add ``ep``; returns its whole group when it is the last member."""
        members = self.partial.setdefault(ep.group_id, [])
        members.append(ep)
        if len(members) < ep.group_size:
            return None
        del self.partial[ep.group_id]
        return sorted(members, key=lambda e: e.episode_id)


class TrajectoryReceiver(threading.Thread):
    """Serves the learner's socket until ``halt`` is set."""

    def __init__(self, endpoint: Endpoint, ready: "queue.Queue", expected_actors: int,
                 known_ids: IdSet | None = None):
        super().__init__(name="trajectory-receiver", daemon=True)
        self.endpoint, self.ready = endpoint, ready
        self.expected_actors = expected_actors
        self.assembler = GroupAssembler()
        self.complete: collections.deque = collections.deque()
        self.peers: dict[int, bytes] = {}
        # Every episode id taken, each once (a resumed run's includes those of before).
        self.received = known_ids if known_ids is not None else IdSet()
        self.done: dict[int, ActorDone] = {}
        self.duplicates = 0
        self.after_end = 0
        self.draining = threading.Event()
        self.all_done = threading.Event()
        self.halt = threading.Event()
        self.stop_reason = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # surfaced by the learner's main loop
            self.error = exc

    def drain(self, reason: str) -> None:
        """Tell every actor to stop; keep acknowledging until they report done."""
        self.stop_reason = reason
        self.draining.set()

    def _serve(self) -> None:
        stopped: set[int] = set()
        while not self.halt.is_set():
            if self.draining.is_set():
                for idx, peer in self.peers.items():
                    if idx not in stopped:
                        self.endpoint.send(StopActors(self.stop_reason), peer)
                        stopped.add(idx)
                self.after_end += sum(len(g) for g in self.complete)
                self.complete.clear()
            elif self.complete:
                try:
                    self.ready.put(self.complete[0], timeout=0.05)
                    self.complete.popleft()
                except queue.Full:
                    continue  # hold back: do not read while the learner is behind
            if not self.endpoint.poll(50):
                continue
            try:
                got = self.endpoint.recv()
            except ProtocolError as err:
                self.endpoint.refuse(err, log)
                continue
            self._handle(got.peer, got.msg)

    def _handle(self, peer: bytes, msg) -> None:
        if isinstance(msg, ActorHello):
            self.peers[msg.actor_index] = peer
            log.info("actor %d connected (%d envs, groups of %d)", msg.actor_index,
                     msg.num_envs, msg.group_size)
        elif isinstance(msg, Trajectory):
            self._take(peer, msg)
        elif isinstance(msg, ActorDone):
            self.done[msg.actor_index] = msg
            self.endpoint.send(TrajectoryAck(-1, False), peer)
            if len(self.done) >= self.expected_actors:
                self.all_done.set()

    def _take(self, peer: bytes, ep: Trajectory) -> None:
        duplicate = not self.received.add(ep.episode_id)
        if duplicate:
            self.duplicates += 1
        self.endpoint.send(TrajectoryAck(ep.episode_id, duplicate), peer)
        if duplicate:
            return
        if self.draining.is_set():
            self.after_end += 1
            return
        group = self.assembler.add(ep)
        if group is not None:
            self.complete.append(group)
