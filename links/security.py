"""Optional ZeroMQ CURVE authentication and encryption (``network.curve_dir``).

``launch.py keys DIR`` makes two key pairs: ``server`` (every role that binds: the
learner's rendezvous and trajectory sockets, the inference servers) and ``client`` (every
role that connects), and puts the client's public key in ``DIR/authorized/``. A bound
socket is a CURVE server; a ZAP handler (one :class:`Authenticator` per process that
binds) lets in only the public keys found in ``authorized/``. A peer with another key, or
none, never completes the handshake: it gets nothing, and the refusal is logged and
counted. The folder holds secret keys: give it to the run's hosts only (mode 0700).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path

import zmq
import zmq.auth
from typing_extensions import override
from zmq.auth.thread import ThreadAuthenticator

from protocol.endpoint import LogLimiter

log = logging.getLogger(__name__)
SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"


def make_keys(folder: str | Path) -> Path:
    """Create the run's key pairs in ``folder`` (refuses to overwrite existing keys)."""
    folder = Path(folder)
    if (folder / f"{SERVER}.key_secret").exists():
        raise FileExistsError(f"{folder} already holds keys; use another folder or delete "
                              "it first")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    zmq.auth.create_certificates(str(folder), SERVER)
    public, _ = zmq.auth.create_certificates(str(folder), CLIENT)
    (folder / AUTHORIZED).mkdir(exist_ok=True)
    Path(public).replace(folder / AUTHORIZED / f"{CLIENT}.key")
    return folder


def _load(folder: Path, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = folder / f"{name}.key_secret" if secret else folder / f"{name}.key"
    if not path.exists() and name == CLIENT and not secret:
        path = folder / AUTHORIZED / f"{CLIENT}.key"
    if not path.exists():
        raise RuntimeError(f"network.curve_dir={folder}: no {path.name}; make the keys with "
                           f"`python launch.py keys {folder}`")
    return zmq.auth.load_certificate(str(path))


def apply_curve(sock: zmq.Socket, folder: str, server: bool) -> None:
    """Make ``sock`` a CURVE server (bound sockets) or client (connecting sockets)."""
    folder_path = Path(folder)
    if server:
        public, secret = _load(folder_path, SERVER, secret=True)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True
        return
    server_public, _ = _load(folder_path, SERVER, secret=False)
    public, secret = _load(folder_path, CLIENT, secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = public, secret


class _KeyCheck:
    """ZAP callback: lets in the authorised public keys; logs and counts the rest."""

    def __init__(self, allowed: set[bytes]):
        self.allowed, self.refused = allowed, 0
        self.limit = LogLimiter()
        self.lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        with self.lock:
            self.refused += 1
            allowed, held = self.limit.allow()
        if allowed:
            log.warning("refused a CURVE connection from an unauthorised key %s%s",
                        key.decode(errors="replace")[:12] + "...",
                        f" ({held} more refused, not logged)" if held else "")
        return False


FAILED_HANDSHAKES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HandshakeWatch(threading.Thread):
    """Logs the failed handshakes of bound CURVE sockets: a peer without CURVE (or with
    a mismatched mechanism) fails before the ZAP handler ever sees a key."""

    def __init__(self, check: _KeyCheck):
        super().__init__(name="curve-handshakes", daemon=True)
        self.check, self.halt = check, threading.Event()
        self.monitors: list[tuple[zmq.Socket, str]] = []
        self.lock = threading.Lock()
        self.failed = 0

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Log failed handshakes on the bound socket ``sock`` (called ``name``) from now on."""
        with self.lock:
            self.monitors.append((sock.get_monitor_socket(FAILED_HANDSHAKES), name))

    @override
    def run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while not self.halt.is_set():
            with self.lock:
                monitors = list(self.monitors)
            poller = zmq.Poller()
            for mon, _ in monitors:
                poller.register(mon, zmq.POLLIN)
            ready = dict(poller.poll(100)) if monitors else {}
            if not monitors:
                self.halt.wait(0.1)
            for mon, name in monitors:
                if mon in ready:
                    event = recv_monitor_message(mon)
                    if event["event"] & FAILED_HANDSHAKES:
                        self._failed(name, event)
        with self.lock:
            for mon, _ in self.monitors:
                mon.close(0)

    def _failed(self, name: str, event: dict) -> None:
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # the key check counted and logged it already
        self.failed += 1
        with self.check.lock:
            allowed, held = self.check.limit.allow()
        if allowed:
            log.warning("refused a connection to %s: CURVE handshake failed (a peer without "
                        "the run's keys)%s", name,
                        f" ({held} more refused, not logged)" if held else "")


class Authenticator:
    """The ZAP handler of one process's context; ``stop`` it before ``ctx.term()`` (a
    running handler keeps the context from terminating)."""

    def __init__(self, ctx: zmq.Context, folder: str):
        allowed = set(zmq.auth.load_certificates(str(Path(folder) / AUTHORIZED)))
        if not allowed:
            raise RuntimeError(f"network.curve_dir={folder}: no public key in "
                               f"{AUTHORIZED}/; make the keys with `launch.py keys {folder}`")
        self.check = _KeyCheck(allowed)
        self.thread = ThreadAuthenticator(ctx, log=logging.getLogger("chunkrl.zap"))
        self.thread.start()
        self.thread.configure_curve_callback("*", credentials_provider=self.check)
        self.handshakes = HandshakeWatch(self.check)
        self.handshakes.start()

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Log failed handshakes on the bound socket ``sock`` (called ``name``)."""
        self.handshakes.watch(sock, name)

    @property
    def refused(self) -> int:
        """Connections refused so far: wrong keys, and failed handshakes of peers without."""
        return self.check.refused + self.handshakes.failed

    def stop(self) -> None:
        """Stop the handshake watch and the ZAP handler (before ``ctx.term()``)."""
        _BY_CONTEXT.pop(self.thread.context, None)
        self.handshakes.halt.set()
        self.handshakes.join(timeout=5)
        self.thread.stop()


# The authenticator of each context, so wiring can have its bound sockets watched.
_BY_CONTEXT: "weakref.WeakKeyDictionary[zmq.Context, Authenticator]" = \
    weakref.WeakKeyDictionary()


def start_authenticator(ctx: zmq.Context, cfg) -> Authenticator | None:
    """The ZAP handler for a process that binds sockets, when CURVE is on (else None);
    start it before binding."""
    if not cfg.network.curve_dir or cfg.network.transport == "inproc":
        return None
    auth = _BY_CONTEXT[ctx] = Authenticator(ctx, cfg.network.curve_dir)
    return auth


def watch_bound(ctx: zmq.Context, sock: zmq.Socket, name: str) -> None:
    """Have the context's authenticator log failed handshakes on ``sock``."""
    auth = _BY_CONTEXT.get(ctx)
    if auth is None:
        raise RuntimeError("network.curve_dir is set but no authenticator runs in this "
                           "process; start_authenticator must come before binding")
    auth.watch(sock, name)
