"""The learner's ends of its links, shared by training and evaluation: the trajectory
socket with its receiving thread, and the weight sender to the inference servers."""

from __future__ import annotations

import logging
import queue

import torch
import zmq

from configs import Config
from learner.receiver import TrajectoryReceiver
from protocol import wiring
from protocol.endpoint import Endpoint
from protocol.idset import IdSet
from protocol.messages import ActorDone, ActorHello, Trajectory
from protocol.weights import DistWeightSender, join_group

log = logging.getLogger(__name__)


class TrajectoryLink:
    """The bound learner socket, the thread that acknowledges episodes on it, and its
    bounded queue of complete groups (``ready``). ``known_ids``: episodes received before
    a restart, acknowledged as duplicates if they come again."""

    def __init__(self, cfg: Config, ctx: zmq.Context, name: str, known_ids: IdSet | None = None):
        self.cfg = cfg
        self.endpoint = Endpoint(wiring.bind_learner(ctx, cfg), name, cfg.run.run_id,
                                 cfg.network.max_message_mb << 20,
                                 expected=(ActorHello, Trajectory, ActorDone), routed=True)
        self.ready: queue.Queue = queue.Queue(maxsize=cfg.learner.max_ready_groups)
        a = cfg.actor
        self.receiver = TrajectoryReceiver(self.endpoint, self.ready, a.num_actors, known_ids,
                                           a.num_actors * a.envs_per_actor // a.group_size)
        self.receiver.start()

    def stop_actors(self, reason: str) -> None:
        """Tell the actors to stop and keep acknowledging until they are done (bounded)."""
        r = self.receiver
        r.drain(reason)
        r.all_done.wait(self.cfg.actor.flush_timeout_s + 10)
        r.halt.set()
        r.join()

    def close(self) -> None:
        self.endpoint.close()


def weight_sender(cfg: Config, device: torch.device, given=None):
    """``given`` (an in-process bus in --single-process mode), else a torch.distributed
    group with the inference servers, as rank 0."""
    return given if given is not None else DistWeightSender(join_group(cfg, 0, device),
                                                             device)


def close_weights(weights) -> None:
    """End the weights link, which tells the inference servers to stop."""
    try:
        weights.close()
    except Exception as exc:  # a server already gone must not hide the run's results
        log.warning("could not tell the inference servers to stop: %s", exc)
