"""A socket plus the codec: send messages, receive validated ones, count bad ones."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import zmq

from protocol.codec import ProtocolError, decode, encode
from protocol.messages import ErrorReply

# A flood of bad messages (a stranger, a fuzzer) must not flood the log, whose writes can
# block the serving thread: at most this many lines per window, the rest summed up.
LOG_BURST = 10
LOG_WINDOW_S = 10.0


class LogLimiter:
    """Allows ``burst`` lines per ``window_s`` seconds and counts the ones it holds back."""

    def __init__(self, burst: int = LOG_BURST, window_s: float = LOG_WINDOW_S):
        self.burst, self.window_s = burst, window_s
        self.window_start, self.lines, self.held_back = -window_s, 0, 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log this line, how many were held back since the last one)."""
        now = time.monotonic()
        if now - self.window_start >= self.window_s:
            self.window_start, self.lines = now, 0
        if self.lines >= self.burst:
            self.held_back += 1
            return False, 0
        self.lines += 1
        held, self.held_back = self.held_back, 0
        return True, held


@dataclass
class Received:
    """One received message; ``peer`` is the ROUTER identity of its sender (else b"")."""

    peer: bytes
    sender: str
    msg: object


class SocketThreadError(RuntimeError):
    """An endpoint used from a thread other than its owner's."""


@dataclass
class Endpoint:
    """Wraps a ZeroMQ socket: encodes on send, decodes and validates on receive.

    A ROUTER endpoint (``routed=True``) reads and writes the peer identity frame.
    One thread owns it: ZeroMQ sockets are not thread-safe, so the first thread to send,
    poll or receive on an endpoint is its owner, and any other raises
    :class:`SocketThreadError` (a thread that needs it asks its owner, e.g. through a
    queue the owner drains, as the learner's receiver does).
    """

    sock: zmq.Socket
    name: str
    run: str
    max_bytes: int
    expected: tuple = ()
    routed: bool = False
    seq: int = 0
    rejected: dict = field(default_factory=dict)
    bytes_sent: int = 0  # payload bytes (header + arrays) of every message, for profiles
    bytes_received: int = 0
    log_limit: LogLimiter = field(default_factory=LogLimiter)
    owner: int = 0  # threading.get_ident() of the owning thread (0: not used yet)

    def _check_thread(self) -> None:
        me = threading.get_ident()
        if self.owner != me:
            if self.owner:
                raise SocketThreadError(
                    f"endpoint {self.name!r} is owned by thread {self.owner} and was used "
                    f"from thread {me}: a ZeroMQ socket belongs to one thread")
            self.owner = me

    def send(self, msg, peer: bytes = b"", flags: int = 0) -> None:
        """Send ``msg`` (to ``peer`` on a ROUTER) without copying its arrays."""
        self._check_thread()
        self.seq += 1
        frames = encode(msg, self.name, self.run, self.seq)
        self.bytes_sent += sum(len(f) for f in frames)
        if self.routed:
            frames = [peer, *frames]
        self.sock.send_multipart(frames, copy=False, flags=flags)

    def poll(self, timeout_ms: float) -> bool:
        """True when a message is waiting."""
        self._check_thread()
        return bool(self.sock.poll(max(0, int(timeout_ms)), zmq.POLLIN))

    def recv(self) -> Received:
        """Receive one message; raises :class:`ProtocolError` (already counted) if bad.

        ``err.peer`` tells a ROUTER whom to send the error reply to.
        """
        self._check_thread()
        frames = self.sock.recv_multipart(copy=False)
        peer = b""
        if self.routed:
            peer, frames = frames[0].bytes, frames[1:]
        self.bytes_received += sum(len(f) for f in frames)
        try:
            env, msg = decode(frames, self.max_bytes, self.expected)
        except ProtocolError as err:
            self.rejected[err.code] = self.rejected.get(err.code, 0) + 1
            err.peer = peer
            raise
        if env.run != self.run:
            self.rejected["wrong_run"] = self.rejected.get("wrong_run", 0) + 1
            err = ProtocolError("wrong_run", f"message from run {env.run!r} reached run "
                                f"{self.run!r}; check network addresses and run.run_id",
                                getattr(msg, "request_id", -1))
            err.peer = peer
            raise err
        return Received(peer, env.sender, msg)

    def refuse(self, err: ProtocolError, logger) -> None:
        """Answer a rejected message (already counted by ``recv``) with an ErrorReply to
        its sender, and log it, rate-limited."""
        allowed, held = self.log_limit.allow()
        if allowed:
            logger.warning("rejected a message from %r: %s%s", err.peer, err,
                           f" ({held} more rejected, not logged)" if held else "")
        if err.peer:
            self.send(ErrorReply(err.request_id, err.code, str(err)), err.peer)

    def close(self) -> None:
        """Close the socket (pending sends get the socket's linger time)."""
        self.sock.close()
