"""All of chunkrl's wiring in one place: every address, which socket connects where, and
which messages each link's endpoint accepts (the ``*_endpoint`` functions return them ready).

Links (B = bind, C = connect):

    server i DEALER --C--> ROUTER  learner's rendezvous  (Register/Heartbeat ->,
    actor k  DEALER --C--> ROUTER                         <- Roster / ErrorReply)
             Only the rendezvous address is configured everywhere; the rest is learnt
             from its Roster: the trajectory address and every server's address.
    actor k  DEALER --C--> ROUTER  inference server i   (one DEALER per server: the actor
             (ObsRequest ->, <- ActionReply/ErrorReply)   chooses the server of a request)
    actor k  DEALER --C--> ROUTER  learner              (Trajectory/ActorHello/ActorDone
                                   (<- TrajectoryAck / StopActors / EvalRound / ErrorReply)
    learner  rank 0 ---- torch.distributed ---- server i rank 1, one 2-rank group per
             server and generation (a restarted server joins a new one), rendezvous in a
             store at the learner under the prefix "weights/{i}/{generation}/"
    learner  rank 0 ---- torch.distributed ---- learner ranks 1..R-1 (learner.num_ranks,
             the data-parallel update), rendezvous under "learner-dp/{incarnation}/"

Addresses by ``network.transport``:
    ipc:    ipc://{ipc_dir}/{run_id}/rendezvous.sock, .../learner.sock, .../inference-{i}.sock;
            weights groups meet in FileStores in the same folder (one host)
    tcp:    rendezvous tcp://{learner_host}:{base_port}, trajectories {base_port+1}, weights
            TCPStore {base_port+2} (unauthenticated: private networks only), server i
            {base_port+3+i} on its own host
    inproc: inproc://rendezvous, inproc://learner, inproc://inference-{i}; weights handed
            over in memory (--single-process: every role a thread of one process)
Every role binds on ``network.bind_host`` (loopback unless configured) and announces that
address; with 0.0.0.0 it announces ``learner_host`` / ``inference_hosts[i]`` instead.
With ``network.curve_dir`` every bound socket is a CURVE server and every connecting
socket a CURVE client (links/security.py).
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import zmq

from configs import Config
from links import security
from protocol.endpoint import Endpoint
from protocol.messages import (
    ActionReply, ActorDone, ActorHello, ErrorReply, EvalRound, Heartbeat, ObsRequest, Register,
    Roster, StopActors, Trajectory, TrajectoryAck,
)

ANY_HOST = ("0.0.0.0", "*")
HEARTBEAT_IVL_MS = 2000  # a DEALER's ZMTP ping interval
HEARTBEAT_TIMEOUT_MS = 10000  # silence after which either end drops the connection


def ipc_folder(cfg: Config) -> Path:
    """The folder holding this run's ipc socket files and weight-rendezvous files."""
    return Path(cfg.network.ipc_dir) / cfg.run.run_id


def _on_one_host(cfg: Config, name: str) -> str:
    """The ipc or inproc address of the socket ``name`` (empty for tcp)."""
    if cfg.network.transport == "ipc":
        return f"ipc://{ipc_folder(cfg)}/{name}.sock"
    if cfg.network.transport == "inproc":
        return f"inproc://{name}"
    return ""


def _tcp(cfg: Config, announced_host: str, port_offset: int, bind: bool) -> str:
    n = cfg.network
    host = n.bind_host if bind or n.bind_host not in ANY_HOST else announced_host
    return f"tcp://{host}:{n.base_port + port_offset}"


def rendezvous_address(cfg: Config, bind: bool) -> str:
    """The learner's rendezvous ROUTER: the one address every role is configured with."""
    n = cfg.network
    return _on_one_host(cfg, "rendezvous") or \
        f"tcp://{n.bind_host if bind else n.learner_host}:{n.base_port}"


def learner_address(cfg: Config, bind: bool) -> str:
    """The learner's trajectory ROUTER (to bind, or as the Roster announces it)."""
    return _on_one_host(cfg, "learner") or _tcp(cfg, cfg.network.learner_host, 1, bind)


def inference_address(cfg: Config, index: int, bind: bool) -> str:
    """Inference server ``index``'s ROUTER (to bind, or as it announces itself)."""
    hosts = cfg.network.inference_hosts
    return _on_one_host(cfg, f"inference-{index}") or \
        _tcp(cfg, hosts[index] if len(hosts) > 1 else hosts[0], 3 + index, bind)


def _socket(ctx: zmq.Context, kind: int, cfg: Config, server: bool) -> zmq.Socket:
    """A socket with chunkrl's options (protocol/README.md, section 1, lists them).

    No socket sets an identity and no ROUTER hands one over: every connection gets an
    identity of its own from its ROUTER, and replies go to the identity a message came
    from. A ROUTER sends no ZMTP heartbeats of its own (its DEALERs do, and tell it their
    time to live). Each removes a condition of the libzmq 4.3.5 abort of a ROUTER
    (``Assertion failed: !_io_error``, stream_engine_base.cpp:310) that learner/receiver.py
    describes: a handover ends the pipe of a connection that is still up, so its engine
    stops reading; reset by its peer, the engine is left half-closed, and the ROUTER's
    next heartbeat on it asserts."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, cfg.network.high_water_mark)
    sock.setsockopt(zmq.RCVHWM, cfg.network.high_water_mark)
    # A single frame larger than the message limit is refused by libzmq itself, so a
    # rogue peer cannot make us allocate it; the codec checks the total of all frames.
    sock.setsockopt(zmq.MAXMSGSIZE, cfg.network.max_message_mb << 20)
    sock.setsockopt(zmq.LINGER, 1000)
    if kind != zmq.ROUTER:
        # ZMTP heartbeats: a DEALER drops a ROUTER whose host vanished (no TCP reset)
        # after HEARTBEAT_TIMEOUT; the TTL its pings carry makes the ROUTER drop it alike.
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    if cfg.network.curve_dir and cfg.network.transport != "inproc":
        security.apply_curve(sock, cfg.network.curve_dir, server)
    return sock


def _bind(ctx: zmq.Context, cfg: Config, sock: zmq.Socket, address: str) -> zmq.Socket:
    if address.startswith("ipc://"):
        os.makedirs(os.path.dirname(address[len("ipc://"):]), exist_ok=True)
    if cfg.network.curve_dir and cfg.network.transport != "inproc":
        security.watch_bound(ctx, sock, address)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise RuntimeError(f"cannot bind {address}: {exc}; is another run using it? "
                           "change network.base_port or run.run_id") from None
    return sock


def bind_rendezvous(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """Learner: the rendezvous ROUTER where servers and actors register."""
    return _bind(ctx, cfg, _socket(ctx, zmq.ROUTER, cfg, server=True),
                 rendezvous_address(cfg, True))


def connect_dealer(ctx: zmq.Context, cfg: Config, address: str) -> zmq.Socket:
    """Server or actor: a DEALER connected to the ROUTER at ``address`` (the rendezvous,
    an inference server or the learner's trajectory socket)."""
    sock = _socket(ctx, zmq.DEALER, cfg, server=False)
    sock.connect(address)
    return sock


def bind_inference_server(ctx: zmq.Context, cfg: Config, index: int) -> zmq.Socket:
    """Inference server ``index``: ROUTER bound at its address."""
    return _bind(ctx, cfg, _socket(ctx, zmq.ROUTER, cfg, server=True),
                 inference_address(cfg, index, bind=True))


def bind_learner(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """Learner: ROUTER bound for trajectories from every actor, with no receive
    high-water mark: a connection whose input stopped at the mark made libzmq 4.3.5
    abort the learner when that peer went away (learner/receiver.py says how), so its
    receiving thread, which reads it without pause, bounds what it keeps instead."""
    sock = _socket(ctx, zmq.ROUTER, cfg, server=True)
    sock.setsockopt(zmq.RCVHWM, 0)
    return _bind(ctx, cfg, sock, learner_address(cfg, bind=True))


# --- ready endpoints: each link's socket with the messages it may receive ------------

# What each endpoint accepts (anything else is refused with ``unexpected_type``); the
# table in protocol/README.md is generated from this.
ACCEPTS = {
    "rendezvous ROUTER (learner)": (Register, Heartbeat),
    "registration DEALER (server, actor)": (Roster, ErrorReply),
    "inference server ROUTER": (ObsRequest,),
    "actor's inference DEALER": (ActionReply, ErrorReply),
    "learner ROUTER (trajectories)": (ActorHello, Trajectory, ActorDone),
    "actor's learner DEALER": (TrajectoryAck, StopActors, EvalRound, ErrorReply),
}


def _endpoint(cfg: Config, sock: zmq.Socket, name: str, accepts: str,
              routed: bool = False) -> Endpoint:
    return Endpoint(sock, name, cfg.run.run_id, cfg.network.max_message_mb << 20,
                    expected=ACCEPTS[accepts], routed=routed)


def rendezvous_endpoint(ctx: zmq.Context, cfg: Config) -> Endpoint:
    """Learner: the rendezvous, receiving Register and Heartbeat from every role."""
    return _endpoint(cfg, bind_rendezvous(ctx, cfg), "rendezvous",
                     "rendezvous ROUTER (learner)", routed=True)


def registration_endpoint(ctx: zmq.Context, cfg: Config, role: str, index: int) -> Endpoint:
    """Server or actor: its link to the rendezvous, receiving Roster and ErrorReply."""
    return _endpoint(cfg, connect_dealer(ctx, cfg, rendezvous_address(cfg, bind=False)),
                     f"{role}-{index}", "registration DEALER (server, actor)")


def inference_endpoint(ctx: zmq.Context, cfg: Config, index: int) -> Endpoint:
    """Inference server ``index``: bound, receiving ObsRequest from every actor."""
    return _endpoint(cfg, bind_inference_server(ctx, cfg, index), f"inference-{index}",
                     "inference server ROUTER", routed=True)


def actor_inference_endpoint(ctx: zmq.Context, cfg: Config, actor: int,
                             address: str) -> Endpoint:
    """Actor ``actor``: its link to the server at ``address`` (ActionReply, ErrorReply)."""
    return _endpoint(cfg, connect_dealer(ctx, cfg, address),
                     f"actor-{actor}", "actor's inference DEALER")


def learner_endpoint(ctx: zmq.Context, cfg: Config, name: str = "learner") -> Endpoint:
    """Learner: bound for trajectories, receiving ActorHello, Trajectory and ActorDone."""
    return _endpoint(cfg, bind_learner(ctx, cfg), name, "learner ROUTER (trajectories)",
                     routed=True)


def actor_learner_endpoint(ctx: zmq.Context, cfg: Config, actor: int,
                           address: str) -> Endpoint:
    """Actor ``actor``: its link to the learner's trajectory ``address``, receiving
    TrajectoryAck, StopActors, EvalRound and ErrorReply."""
    return _endpoint(cfg, connect_dealer(ctx, cfg, address),
                     f"actor-{actor}", "actor's learner DEALER")


def weights_store(cfg: Config, learner: bool, timeout_s: float = 0.0):
    """The torch.distributed store where the weights groups meet: the learner hosts it
    (tcp), servers connect to it; on one host (ipc) it is a folder of FileStores, one per
    group, opened by :func:`weights_group_store`. Waits on it give up after ``timeout_s``
    (default ``network.join_timeout_s``)."""
    import torch.distributed as dist

    n = cfg.network
    if n.transport == "ipc":
        ipc_folder(cfg).mkdir(parents=True, exist_ok=True)
        return None
    timeout = datetime.timedelta(seconds=timeout_s or n.join_timeout_s)
    if not learner:
        return dist.TCPStore(n.learner_host, n.base_port + 2, None, is_master=False,
                             timeout=timeout)
    # TCPStore alone would listen on every interface: it gets a socket bound to bind_host.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    address = ("" if n.bind_host in ANY_HOST else n.bind_host, n.base_port + 2)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise RuntimeError(f"cannot bind the weights store at {address}: {exc}; change "
                           "network.base_port") from None
    listener.listen()
    return dist.TCPStore(n.bind_host, n.base_port + 2, None, is_master=True, timeout=timeout,
                         wait_for_workers=False, master_listen_fd=listener.detach(),
                         use_libuv=False)


def weights_group_store(cfg: Config, store, index: int, generation: int,
                        timeout_s: float = 0.0):
    """The store of server ``index``'s weights group ``generation`` (two ranks)."""
    import torch.distributed as dist

    if store is None:  # ipc: a FileStore per group, removed when both ranks are done
        path = ipc_folder(cfg) / f"weights-{index}-{generation}.store"
        store = dist.FileStore(str(path), 2)
        store.set_timeout(datetime.timedelta(seconds=timeout_s or cfg.network.join_timeout_s))
        return store
    return dist.PrefixStore(f"weights/{index}/{generation}/", store)


def learner_group_store(cfg: Config, weights_store_=None):
    """Where the data-parallel learner's ranks meet (learner/data_parallel.py): a FileStore
    in the ipc folder (one host), or the prefix ``learner-dp/{incarnation}/`` of the
    weights store (tcp), which rank 0 hosts (``weights_store_``) and the other ranks reach
    at ``learner_host``."""
    import torch.distributed as dist

    if cfg.network.transport == "ipc":
        ipc_folder(cfg).mkdir(parents=True, exist_ok=True)
        path = ipc_folder(cfg) / f"learner-dp-{cfg.run.incarnation}.store"
        return dist.FileStore(str(path), cfg.learner.num_ranks)
    store = weights_store_ if weights_store_ is not None else weights_store(cfg, learner=False)
    return dist.PrefixStore(f"learner-dp/{cfg.run.incarnation}/", store)


def gloo_host(cfg: Config) -> str:
    """The address gloo binds for the weights (empty: let gloo choose, from the hostname)."""
    n = cfg.network
    return "" if n.transport != "tcp" or n.bind_host in ANY_HOST else n.bind_host
