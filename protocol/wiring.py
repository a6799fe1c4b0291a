"""All of chunkrl's wiring in one place: every address, and which socket connects where.

Links (B = bind, C = connect):

    actor k  DEALER --C--> ROUTER  inference server i   (every actor connects to every
             (ObsRequest ->, <- ActionReply/ErrorReply)   server; DEALER round-robins)
    actor k  DEALER --C--> ROUTER  learner              (Trajectory/ActorHello/ActorDone
             (identity "actor-k")  (<- TrajectoryAck / StopActors)
    learner  rank 0 ---- torch.distributed ---- inference server i = rank 1+i
             (weights; a process group of its own, rendezvous at the learner)

Addresses by ``network.transport``:
    ipc:    ipc://{ipc_dir}/{run_id}/learner.sock, .../inference-{i}.sock;
            weights rendezvous through a FileStore in the same folder (one host)
    tcp:    learner tcp://{learner_host}:{base_port}, server i tcp://{host_i}:{base_port+2+i};
            weights rendezvous on a TCPStore at {learner_host}:{base_port+1}
    inproc: inproc://learner, inproc://inference-{i}; weights handed over in memory
            (--single-process: every role is a thread of one process sharing one context)
Servers bind on ``network.bind_host`` (loopback unless configured).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import zmq

from configs import Config


def ipc_folder(cfg: Config) -> Path:
    """The folder holding this run's ipc socket files and weight-rendezvous file."""
    return Path(cfg.network.ipc_dir) / cfg.run.run_id


def learner_address(cfg: Config, bind: bool) -> str:
    """Address of the learner's trajectory ROUTER (to bind, or to connect to)."""
    n = cfg.network
    if n.transport == "ipc":
        return f"ipc://{ipc_folder(cfg)}/learner.sock"
    if n.transport == "inproc":
        return "inproc://learner"
    return f"tcp://{n.bind_host if bind else n.learner_host}:{n.base_port}"


def inference_address(cfg: Config, index: int, bind: bool) -> str:
    """Address of inference server ``index``'s ROUTER (to bind, or to connect to)."""
    n = cfg.network
    if n.transport == "ipc":
        return f"ipc://{ipc_folder(cfg)}/inference-{index}.sock"
    if n.transport == "inproc":
        return f"inproc://inference-{index}"
    host = n.inference_hosts[index] if len(n.inference_hosts) > 1 else n.inference_hosts[0]
    return f"tcp://{n.bind_host if bind else host}:{n.base_port + 2 + index}"


def _socket(ctx: zmq.Context, kind: int, cfg: Config, identity: str = "") -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, cfg.network.high_water_mark)
    sock.setsockopt(zmq.RCVHWM, cfg.network.high_water_mark)
    # A single frame larger than the message limit is refused by libzmq itself, so a
    # rogue peer cannot make us allocate it; the codec checks the total of all frames.
    sock.setsockopt(zmq.MAXMSGSIZE, cfg.network.max_message_mb << 20)
    sock.setsockopt(zmq.LINGER, 1000)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    return sock


def _bind(sock: zmq.Socket, address: str) -> zmq.Socket:
    if address.startswith("ipc://"):
        os.makedirs(os.path.dirname(address[len("ipc://"):]), exist_ok=True)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise RuntimeError(f"cannot bind {address}: {exc}; is another run using it? "
                           "change network.base_port or run.run_id") from None
    return sock


def bind_inference_server(ctx: zmq.Context, cfg: Config, index: int) -> zmq.Socket:
    """Inference server ``index``: ROUTER bound at its address."""
    return _bind(_socket(ctx, zmq.ROUTER, cfg), inference_address(cfg, index, bind=True))


def connect_actor_to_inference(ctx: zmq.Context, cfg: Config, actor: int) -> zmq.Socket:
    """Actor ``actor``: one DEALER connected to every inference server."""
    sock = _socket(ctx, zmq.DEALER, cfg, identity=f"actor-{actor}")
    for i in range(cfg.inference.num_servers):
        sock.connect(inference_address(cfg, i, bind=False))
    return sock


def bind_learner(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """Learner: ROUTER bound for trajectories from every actor."""
    return _bind(_socket(ctx, zmq.ROUTER, cfg), learner_address(cfg, bind=True))


def connect_actor_to_learner(ctx: zmq.Context, cfg: Config, actor: int) -> zmq.Socket:
    """Actor ``actor``: DEALER to the learner, identity ``actor-{k}`` so it can be addressed."""
    sock = _socket(ctx, zmq.DEALER, cfg, identity=f"actor-{actor}")
    sock.connect(learner_address(cfg, bind=False))
    return sock


def weights_store(cfg: Config, rank: int):
    """The torch.distributed store where the learner (rank 0) and servers meet."""
    import torch.distributed as dist

    world = 1 + cfg.inference.num_servers
    timeout = datetime.timedelta(seconds=cfg.network.weights_timeout_s)
    if cfg.network.transport == "ipc":
        folder = ipc_folder(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        return dist.FileStore(str(folder / "weights.store"), world)
    n = cfg.network
    return dist.TCPStore(n.bind_host if rank == 0 else n.learner_host, n.base_port + 1,
                         world, is_master=(rank == 0), timeout=timeout)
