"""The learner's receiving thread: acknowledges episodes exactly once, assembles groups.

It owns the learner's ROUTER socket. A new episode is recorded, acknowledged and added
to its group; a duplicate (an actor's resend whose ack was lost) is acknowledged again
but not counted. Complete groups go to a bounded queue. While it is full, the thread
keeps reading the socket but parks arriving episodes unacknowledged (at most
``max_parked``; beyond that they are dropped unacknowledged and the actor sends them
again), and takes them once the learner has room: actors' outboxes fill and they wait
(backpressure). It never stops reading the socket, which has no receive high-water mark
(links/wiring.py). When a slot was taken over and its old actor exited
(tests/test_slot_takeover.py), libzmq 4.3.5 aborted the learner (``Assertion failed:
!_io_error``, stream_engine_base.cpp:310): 2 of 2 runs while this thread paused reading,
2 of 16 loaded runs once it read without pause, 1 in 28 more once the mark was gone too
(CI, 2026-12-05). Read in libzmq's code, that assertion needs a connection whose input
stopped because its pipe to the socket was full (a high-water mark) or gone (a ROUTER
handover gave its identity to a newer connection); the peer's reset then leaves the
engine half-closed but alive, and the ROUTER's own heartbeat timer writes on it
unchecked. So no ROUTER hands identities over or sends heartbeats of its own (their
DEALERs do, with a time to live), and no peer sets an identity: the learner answers the
identity each message came from and learns a connection's actor from its ``ActorHello``
and from its latest episode (a connection dropped by a heartbeat timeout comes back
under a new identity without a hello). At the end every actor not done is told to stop,
and told again every ``STOP_RESEND_S`` until it reports done.
With a rendezvous :class:`~links.rendezvous.Registry`, only episodes of live actor
incarnations are taken: a dead incarnation's unfinished groups are discarded (never
trained) and its later episodes refused with ``ErrorReply("retired")``; an episode of an
actor not registered yet is left unacknowledged (its actor sends it again).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

from typing_extensions import override

from protocol.codec import ProtocolError
from protocol.endpoint import Endpoint, LogLimiter
from protocol.idset import IdSet
from protocol.ids import actor_of
from protocol.messages import (
    ActorDone, ActorHello, ErrorReply, StopActors, Trajectory, TrajectoryAck,
)

log = logging.getLogger(__name__)
STOP_RESEND_S = 2.0  # how often an actor not done yet is told again to stop


class GroupAssembler:
    """Collects episodes by group id; hands out a group once all G have arrived.

    Actors send a group's episodes together, so few groups are ever partial; at most
    ``max_partial`` are kept (the oldest is evicted and counted), so a peer that sends
    episodes of groups it never completes cannot grow the learner's memory."""

    def __init__(self, max_partial: int = 1024):
        self.partial: dict[int, list[Trajectory]] = {}
        self.max_partial = max_partial
        self.evicted = 0  # episodes of evicted partial groups
        self.log_limit = LogLimiter()

    def add(self, ep: Trajectory) -> list[Trajectory] | None:
        """Add ``ep``; returns its whole group when it is the last member."""
        if ep.group_id not in self.partial and len(self.partial) >= self.max_partial:
            oldest = next(iter(self.partial))
            self.evicted += len(self.partial.pop(oldest))
            if self.log_limit.allow()[0]:
                log.warning("dropped the unfinished group %d: more than %d groups were "
                            "incomplete at once (%d episodes dropped so far)", oldest,
                            self.max_partial, self.evicted)
        members = self.partial.setdefault(ep.group_id, [])
        members.append(ep)
        if len(members) < ep.group_size:
            return None
        del self.partial[ep.group_id]
        return sorted(members, key=lambda e: e.episode_id)

    def discard(self, actor: int, incarnation: int) -> list[int]:
        """Drop the partial groups of ``actor``'s ``incarnation``; returns their episode ids."""
        dropped = []
        for group_id in [g for g in self.partial if actor_of(g) == (actor, incarnation)]:
            dropped += [ep.episode_id for ep in self.partial.pop(group_id)]
        return dropped


class TrajectoryReceiver(threading.Thread):
    """Serves the learner's socket until ``halt`` is set."""

    def __init__(self, endpoint: Endpoint, ready: "queue.Queue", expected_actors: int,
                 known_ids: IdSet | None = None, max_groups: int = 0, registry=None,
                 max_parked: int = 4096):
        super().__init__(name="trajectory-receiver", daemon=True)
        self.endpoint, self.ready = endpoint, ready
        self.expected_actors, self.registry = expected_actors, registry
        # Every actor group could be in flight at once; twice that is never reached.
        self.assembler = GroupAssembler(max(1024, 2 * max_groups))
        self.complete: collections.deque = collections.deque()
        self.peers: dict[int, bytes] = {}
        # Every episode id taken, each once (a resumed run's includes those of before).
        self.received = known_ids if known_ids is not None else IdSet()
        self.done: dict[int, ActorDone] = {}
        self.duplicates = 0
        self.after_end = 0
        self.discarded = IdSet()  # episodes of unfinished groups of dead incarnations
        self.refused_retired = self.unregistered = 0
        # Episodes read while the learner is behind, by id (a resend replaces its copy).
        self.parked: "collections.OrderedDict[int, tuple[bytes, Trajectory]]" = \
            collections.OrderedDict()
        self.max_parked, self.parked_dropped = max_parked, 0
        self._retire: "queue.SimpleQueue[tuple[int, int]]" = queue.SimpleQueue()
        self._orders: "queue.SimpleQueue[tuple[tuple, object]]" = queue.SimpleQueue()
        self.standing: dict[int, object] = {}  # actor -> its latest order, resent on hello
        self.log_limit = LogLimiter()
        self.draining = threading.Event()
        self.all_done = threading.Event()
        self.halt = threading.Event()
        self.stop_reason = ""
        self.error: BaseException | None = None

    @override
    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # surfaced by the learner's main loop
            self.error = exc

    def retire(self, actor: int, incarnation: int) -> None:
        """``actor``'s ``incarnation`` is dead: discard its unfinished groups (thread-safe;
        done on the receiving thread)."""
        self._retire.put((actor, incarnation))

    def order(self, actors: list[int], msg) -> None:
        """Send ``msg`` (an EvalRound) to each of ``actors`` now or when it says hello,
        and again after each later hello (thread-safe; sent by the receiving thread, the
        socket's owner)."""
        self._orders.put((tuple(actors), msg))

    def _send_orders(self) -> None:
        while not self._orders.empty():
            actors, msg = self._orders.get()
            for index in actors:
                self.standing[index] = msg
                if index in self.peers:
                    self.endpoint.send(msg, self.peers[index])

    def _discard_retired(self) -> None:
        while not self._retire.empty():
            actor, incarnation = self._retire.get()
            dropped = self.assembler.discard(actor, incarnation)
            for episode_id in dropped:
                self.discarded.add(episode_id)
            if dropped:
                log.warning("actor %d incarnation %d is dead: %d episodes of its unfinished "
                            "groups discarded", actor, incarnation, len(dropped))

    def _check_done(self) -> None:
        live = self.registry.live_actors() if self.registry is not None else None
        if (live is not None and live <= set(self.done)) or \
                len(self.done) >= self.expected_actors:
            self.all_done.set()

    def drain(self, reason: str) -> None:
        """Tell every actor to stop; keep acknowledging until they report done."""
        self.stop_reason = reason
        self.draining.set()

    def _tell_stop(self, told: dict[bytes, float]) -> None:
        """StopActors to every actor not done yet: at once to a connection not told yet,
        and again every STOP_RESEND_S (a ROUTER drops what it cannot deliver, silently)."""
        now = time.monotonic()
        for idx, peer in self.peers.items():
            if idx not in self.done and now - told.get(peer, -STOP_RESEND_S) >= STOP_RESEND_S:
                self.endpoint.send(StopActors(self.stop_reason), peer)
                told[peer] = now

    def _serve(self) -> None:
        told: dict[bytes, float] = {}  # connection -> when it was last told to stop
        while not self.halt.is_set():
            self._discard_retired()
            self._send_orders()
            if self.draining.is_set():
                self._check_done()
                self._tell_stop(told)
                self.after_end += sum(len(g) for g in self.complete)
                self.complete.clear()
            elif self.complete:
                try:
                    self.ready.put_nowait(self.complete[0])
                    self.complete.popleft()
                except queue.Full:
                    pass  # the learner is behind: read on, park what arrives
            while self.parked and not self.complete:
                self._take(*self.parked.popitem(last=False)[1])
            if not self.endpoint.poll(50):
                continue
            try:
                got = self.endpoint.recv()
            except ProtocolError as err:
                self.endpoint.refuse(err, log)
                continue
            if isinstance(got.msg, Trajectory) and (self.complete or self.parked):
                self._park(got.peer, got.msg)
            else:
                self._handle(got.peer, got.msg)

    def _park(self, peer: bytes, ep: Trajectory) -> None:
        """Keep ``ep`` unacknowledged until the learner has room (see the module doc)."""
        if ep.episode_id in self.parked or len(self.parked) < self.max_parked:
            self.parked[ep.episode_id] = (peer, ep)
        else:
            self.parked_dropped += 1  # not acknowledged: its actor sends it again

    def _handle(self, peer: bytes, msg) -> None:
        if isinstance(msg, ActorHello):
            self.peers[msg.actor_index] = peer
            log.info("actor %d connected (%d envs, groups of %d)", msg.actor_index,
                     msg.num_envs, msg.group_size)
            if msg.actor_index in self.standing and not self.draining.is_set():
                self.endpoint.send(self.standing[msg.actor_index], peer)
        elif isinstance(msg, Trajectory):
            self._take(peer, msg)
        elif isinstance(msg, ActorDone):
            self.done[msg.actor_index] = msg
            self.endpoint.send(TrajectoryAck(-1, False), peer)
            self._check_done()

    def _take(self, peer: bytes, ep: Trajectory) -> None:
        status = self.registry.actor_status(ep.episode_id) if self.registry else "live"
        if status == "retired":
            self.refused_retired += 1
            self.endpoint.send(ErrorReply(-1, "retired", f"episode {ep.episode_id} is of a "
                                          "dead actor incarnation; that actor must exit"), peer)
            return
        if status == "unknown":  # not registered yet (a learner restart): sent again later
            self.unregistered += 1
            if self.log_limit.allow()[0]:
                log.info("episode %d from actor %d incarnation %d before its registration: "
                         "not acknowledged yet", ep.episode_id, *actor_of(ep.episode_id))
            return
        # An actor whose connection dropped (a ZMTP heartbeat timeout) is back under a
        # new identity without a new hello: its latest episode says where it is now.
        self.peers[actor_of(ep.episode_id)[0]] = peer
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
