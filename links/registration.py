"""A server's or actor's side of the learner's rendezvous: register, heartbeat, roster.

``tick`` sends the process's Register until the learner answers (for at most
``network.learner_wait_s``), then a heartbeat every ``network.heartbeat_s``, and reads the
answers; :class:`Registration` runs it on a thread of its own. A rendezvous that no longer
knows the process (the learner restarted) makes it register again; one that says it was
replaced raises :class:`Retired`; silence for ``learner_wait_s`` raises :class:`LearnerGone`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time

import zmq
from typing_extensions import override

from configs import Config
from links import wiring
from protocol.codec import ProtocolError
from protocol.messages import Heartbeat, Register, Roster

# launch.py's exit code for a role that gave up on a lost learner: its supervisor does
# not restart it (a new start could do no better).
EXIT_LEARNER_GONE = 3
# ... and for a configuration error: the same start would fail again.
EXIT_CONFIG_ERROR = 2


class LearnerGone(RuntimeError):
    """The learner has not answered for ``network.learner_wait_s``."""


class Retired(RuntimeError):
    """The learner took this process for dead and replaced it; it must exit."""


class RegistrationClient:
    """The DEALER to the rendezvous and what it last said (``roster``)."""

    def __init__(self, ctx: zmq.Context, cfg: Config, role: str, index: int, address: str = ""):
        self.cfg, self.role, self.index = cfg, role, index
        self.endpoint = wiring.registration_endpoint(ctx, cfg, role, index)
        self.hello = Register(role, index, cfg.incarnation, address, -1)
        self.roster: Roster | None = None
        self.last_contact = time.monotonic()
        self.next_send = 0.0
        self.registered = False
        self.registrations = 0  # Rosters answering a Register (more than 1: learner restarted)

    @property
    def where(self) -> str:
        """The rendezvous' address, as this process connects to it."""
        return wiring.rendezvous_address(self.cfg, bind=False)

    def reregister(self, lost_generation: int = -1) -> None:
        """Register again at the next tick (a server: after losing ``lost_generation``)."""
        self.hello = dataclasses.replace(self.hello, lost_generation=lost_generation)
        self.registered = False
        self.next_send = 0.0

    def tick(self, timeout_ms: float = 0) -> Roster | None:
        """Heartbeat when due, read what came; returns a Roster that arrived, else None."""
        n, now = self.cfg.network, time.monotonic()
        if now >= self.next_send:
            msg = Heartbeat(self.role, self.index, self.hello.incarnation) if self.registered \
                else self.hello
            try:  # never block on a learner that is gone: the heartbeat is just skipped
                self.endpoint.send(msg, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            self.next_send = now + n.heartbeat_s
        got = None
        while self.endpoint.poll(timeout_ms):
            timeout_ms = 0
            try:
                msg = self.endpoint.recv().msg
            except ProtocolError:
                continue  # counted by the endpoint; the next heartbeat asks again
            self.last_contact = time.monotonic()
            if isinstance(msg, Roster):
                self.roster = got = msg
                if not self.registered and (msg.weights_generation >= 0 or
                                            self.role == "actor"):
                    self.registered = True
                    self.registrations += 1
            elif msg.code == "retired":
                raise Retired(f"{self.role} {self.index}: the learner replaced this process "
                              f"(incarnation {self.hello.incarnation}): {msg.message}")
            elif msg.code == "not_registered":  # the learner restarted: register again
                self.reregister()
            else:
                raise RuntimeError(f"the rendezvous refused {self.role} {self.index}: "
                                   f"{msg.code}: {msg.message}")
        if time.monotonic() - self.last_contact > n.learner_wait_s:
            raise LearnerGone(f"no word from the learner's rendezvous at {self.where} for "
                              f"{n.learner_wait_s:.0f} s (network.learner_wait_s); exiting")
        return got

    def close(self) -> None:
        """Close the DEALER to the rendezvous."""
        self.endpoint.close()


class Registration(threading.Thread):
    """A :class:`RegistrationClient` on a thread of its own, so heartbeats go out while the
    process is busy (building simulators, a long forward pass). Its socket lives and dies
    on that thread; the owner reads ``poll`` (the newest Roster, once) and gets the
    client's failure (:class:`LearnerGone`, :class:`Retired`) raised from it."""

    def __init__(self, ctx: zmq.Context, cfg: Config, role: str, index: int,
                 address: str = ""):
        super().__init__(name="registration", daemon=True)
        self.args = (ctx, cfg, role, index, address)
        self.lock = threading.Lock()
        self.roster: Roster | None = None
        self.fresh = False  # a Roster not yet polled
        self.registrations = 0
        self.registered = False
        self.generation = -1  # inference: the weights group of the latest registration
        self.error: BaseException | None = None
        self.halt = threading.Event()
        self._requests: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.start()

    @override
    def run(self) -> None:
        client = RegistrationClient(*self.args)
        try:
            while not self.halt.is_set():
                while not self._requests.empty():
                    client.reregister(self._requests.get())
                got = client.tick(timeout_ms=50)
                with self.lock:
                    self.registered = client.registered
                    self.registrations = client.registrations
                    if got is not None:
                        self.roster, self.fresh = got, True
                        if got.weights_generation >= 0:
                            self.generation = got.weights_generation
        except BaseException as exc:  # raised to the owner by poll / wait
            self.error = exc
        finally:
            client.close()

    def poll(self) -> Roster | None:
        """The Roster that came since the last poll, if any; raises the client's error."""
        if self.error is not None:
            raise self.error
        with self.lock:
            got, self.fresh = (self.roster if self.fresh else None), False
            return got

    def wait(self, stop: threading.Event) -> Roster:
        """Block until registered (bounded by ``network.learner_wait_s``)."""
        while not stop.is_set():
            if self.error is not None:
                raise self.error
            with self.lock:
                if self.registered and self.roster is not None and (
                        self.generation >= 0 or self.args[2] == "actor"):
                    self.fresh = False
                    return self.roster
            time.sleep(0.02)
        raise LearnerGone("stopped before the learner answered")

    def reregister(self, lost_generation: int = -1) -> None:
        """Register again (a server: having lost ``lost_generation``)."""
        with self.lock:
            self.registered = False
        self._requests.put(lost_generation)

    def close(self) -> None:
        """Stop the thread (which closes the client's socket); waits up to 5 s."""
        self.halt.set()
        self.join(timeout=5)
