"""The learner's rendezvous: where inference servers and actors register and live.

A thread serves the rendezvous ROUTER. ``Register`` records a process start (its
incarnation) and is answered with a :class:`Roster`: the trajectory address and every
registered server's address, and for a server the weights group it is to join.
``Heartbeat`` keeps a registration alive and gets the current Roster. A process silent for
``network.heartbeat_timeout_s``, or replaced by a newer incarnation of its slot, is dead:
its registration is dropped (an actor's unfinished groups are discarded by the receiver,
a server's weights group by the weight hub) and a message of its old incarnation is
refused with ``ErrorReply("retired")``. Everything here is in :class:`Registry`, which
the receiver and the weight hub read under its lock.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
from typing_extensions import override

from configs import Config
from links import wiring
from protocol.codec import ProtocolError
from protocol.ids import actor_of
from protocol.messages import ErrorReply, Heartbeat, Register, Roster

log = logging.getLogger(__name__)
ROLES = ("inference", "actor")


@dataclass
class Member:
    """One registered process."""

    incarnation: int
    address: str
    last_seen: float
    generation: int = -1  # servers: the weights group it was told to join


@dataclass(frozen=True)
class Join:
    """A server waiting for the learner to form its weights group."""

    index: int
    generation: int
    incarnation: int
    registered_at: float = 0.0  # the registry's clock: how long admission took, in the log


class Registry:
    """Who is registered, which incarnations are dead, and the servers awaiting a join."""

    def __init__(self, cfg: Config, now=time.monotonic):
        self.cfg, self.now = cfg, now
        self.lock = threading.Lock()
        self.members: dict[str, dict[int, Member]] = {role: {} for role in ROLES}
        # The newest incarnation ever seen per slot: anything older is retired.
        self.newest: dict[str, dict[int, int]] = {role: {} for role in ROLES}
        self.lost: dict[str, set] = {role: set() for role in ROLES}  # (index, incarnation)
        self.joins: "queue.Queue[Join]" = queue.Queue()
        # Generations never repeat, not even after a learner restart (a FileStore of an
        # old group may still lie in the ipc folder).
        self.generation = (int(time.time()) & 0x7FFFFFFF) << 16
        self.restarts = 0  # registrations that replaced a dead or older incarnation
        self.start_id = random.getrandbits(62)

    # --- used by the rendezvous thread --------------------------------------------------
    def register(self, msg: Register) -> tuple[str, int, int]:
        """Record ``msg``; returns (refusal code or "", weights generation or -1, the
        incarnation it replaced: -1 if none, -2 if ``msg`` repeats a registration)."""
        with self.lock:
            newest = self.newest[msg.role].get(msg.index, -1)
            if msg.incarnation < newest or (msg.index, msg.incarnation) in self.lost[msg.role]:
                return "retired", -1, -1
            old = self.members[msg.role].get(msg.index)
            if old is not None and old.incarnation == msg.incarnation and (
                    msg.role == "actor" or msg.lost_generation < old.generation):
                # A repeat (its reply was late or lost): the same answer again.
                old.last_seen = self.now()
                return "", old.generation, -2
            replaced = -1
            if old is not None and old.incarnation != msg.incarnation:
                self.restarts += 1
                replaced = old.incarnation
                self.lost[msg.role].add((msg.index, old.incarnation))
            self.newest[msg.role][msg.index] = msg.incarnation
            member = Member(msg.incarnation, msg.address, self.now())
            if msg.role == "inference":
                self.generation += 1
                member.generation = self.generation
                self.joins.put(Join(msg.index, self.generation, msg.incarnation, self.now()))
            self.members[msg.role][msg.index] = member
            return "", member.generation, replaced

    def heartbeat(self, msg: Heartbeat) -> str:
        """Refresh a registration; returns "" or why not ("retired", "not_registered")."""
        with self.lock:
            member = self.members[msg.role].get(msg.index)
            if member is not None and member.incarnation == msg.incarnation:
                member.last_seen = self.now()
                return ""
            if msg.incarnation < self.newest[msg.role].get(msg.index, -1) or \
                    (msg.index, msg.incarnation) in self.lost[msg.role]:
                return "retired"
            return "not_registered"

    def expire(self) -> list[tuple[str, int, int]]:
        """Drop the registrations silent too long; returns (role, index, incarnation)."""
        limit = self.now() - self.cfg.network.heartbeat_timeout_s
        gone = []
        with self.lock:
            for role, members in self.members.items():
                for index, m in list(members.items()):
                    if m.last_seen < limit:
                        del members[index]
                        self.lost[role].add((index, m.incarnation))
                        gone.append((role, index, m.incarnation))
        return gone

    def roster(self, generation: int = -1) -> Roster:
        """The Roster now: the learner's trajectory address and every server's address and
        incarnation; ``generation``: the weights group to join (-1 for an actor)."""
        n = self.cfg.inference.num_servers
        with self.lock:
            servers = [self.members["inference"].get(i) for i in range(n)]
        return Roster(self.start_id, wiring.learner_address(self.cfg, bind=False),
                      [s.address if s else "" for s in servers],
                      np.array([s.incarnation if s else -1 for s in servers], np.int64),
                      generation)

    # --- used by the receiver and the weight hub ----------------------------------------
    def actor_status(self, episode_id: int) -> str:
        """"live", "retired" (a dead incarnation's) or "unknown" (not registered yet)."""
        index, incarnation = actor_of(episode_id)
        with self.lock:
            member = self.members["actor"].get(index)
            if member is not None and member.incarnation == incarnation:
                return "live"
            if incarnation < self.newest["actor"].get(index, -1) or \
                    (index, incarnation) in self.lost["actor"]:
                return "retired"
            return "unknown"

    def live_actors(self) -> set[int]:
        """The indices of the actors registered now."""
        with self.lock:
            return set(self.members["actor"])

    def current(self, join: Join) -> bool:
        """Whether ``join`` is still the server's newest registration."""
        with self.lock:
            m = self.members["inference"].get(join.index)
            return m is not None and m.generation == join.generation


class Rendezvous(threading.Thread):
    """Serves the rendezvous socket until ``halt`` is set; ``on_lost(role, index,
    incarnation)`` is called (on this thread) for every process found dead."""

    def __init__(self, cfg: Config, ctx, registry: Registry, on_lost=None):
        super().__init__(name="rendezvous", daemon=True)
        self.registry, self.on_lost = registry, on_lost
        self.endpoint = wiring.rendezvous_endpoint(ctx, cfg)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    @override
    def run(self) -> None:
        try:
            while not self.halt.is_set():
                if self.endpoint.poll(100):
                    self._serve_one()
                for role, index, incarnation in self.registry.expire():
                    log.warning("%s %d (incarnation %d) sent no heartbeat for %.0f s: taken "
                                "for dead", role, index, incarnation,
                                self.registry.cfg.network.heartbeat_timeout_s)
                    self._lost(role, index, incarnation)
        except BaseException as exc:  # surfaced by the learner's main loop
            self.error = exc
        finally:
            self.endpoint.close()

    def _lost(self, role: str, index: int, incarnation: int) -> None:
        if self.on_lost is not None:
            self.on_lost(role, index, incarnation)

    def _serve_one(self) -> None:
        try:
            got = self.endpoint.recv()
        except ProtocolError as err:
            self.endpoint.refuse(err, log)
            return
        msg = got.msg
        if msg.role not in ROLES or not 0 <= msg.index < self._slots(msg.role):
            self._refuse(got.peer, "bad_role", f"no {msg.role} {msg.index} in this run "
                         f"(roles {ROLES}; check inference.num_servers / actor.num_actors)")
            return
        if isinstance(msg, Register):
            problem, generation, replaced = self.registry.register(msg)
            if problem:
                self._refuse(got.peer, problem, f"{msg.role} {msg.index} incarnation "
                             f"{msg.incarnation} was replaced; exit")
                return
            if replaced >= 0:
                log.warning("%s %d restarted (incarnation %d -> %d)", msg.role, msg.index,
                            replaced, msg.incarnation)
                self._lost(msg.role, msg.index, replaced)
            elif replaced == -1:
                log.info("%s %d registered (incarnation %d%s)", msg.role, msg.index,
                         msg.incarnation, f", {msg.address}" if msg.address else "")
            self.endpoint.send(self.registry.roster(generation), got.peer)
        else:
            problem = self.registry.heartbeat(msg)
            if problem:
                self._refuse(got.peer, problem, f"{msg.role} {msg.index} incarnation "
                             f"{msg.incarnation} is not registered here; register")
                return
            self.endpoint.send(self.registry.roster(), got.peer)

    def _slots(self, role: str) -> int:
        cfg = self.registry.cfg
        return cfg.inference.num_servers if role == "inference" else cfg.total_actors

    def _refuse(self, peer: bytes, code: str, text: str) -> None:
        self.endpoint.send(ErrorReply(-1, code, text), peer)
