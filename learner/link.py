"""The learner's ends of its links, shared by training and evaluation: the rendezvous,
the trajectory socket with its receiving thread, and the weights to the inference
servers. :class:`LearnerLinks` opens them in order and closes them in reverse."""

from __future__ import annotations

import logging
import queue

import torch
import zmq

from configs import Config
from learner.receiver import TrajectoryReceiver
from links.rendezvous import Registry, Rendezvous
from links.weight_hub import WeightHub
from links import security, wiring
from protocol.idset import IdSet

log = logging.getLogger(__name__)


class TrajectoryLink:
    """The bound learner socket, the thread that acknowledges episodes on it, and its
    bounded queue of complete groups (``ready``). ``known_ids``: episodes received before
    a restart, acknowledged as duplicates if they come again."""

    def __init__(self, cfg: Config, ctx: zmq.Context, name: str, known_ids: IdSet | None = None,
                 registry: Registry | None = None):
        self.cfg = cfg
        self.endpoint = wiring.learner_endpoint(ctx, cfg, name)
        self.ready: queue.Queue = queue.Queue(maxsize=cfg.learner.max_ready_groups)
        a = cfg.actor
        groups = a.num_actors * a.envs_per_actor // a.group_size + \
            (cfg.total_actors - a.num_actors) * cfg.eval.envs_per_actor
        self.receiver = TrajectoryReceiver(self.endpoint, self.ready, cfg.total_actors,
                                           known_ids, groups, registry)
        self.receiver.start()

    def stop_actors(self, reason: str) -> None:
        """Tell the actors to stop and keep acknowledging until they are done (bounded)."""
        r = self.receiver
        r.drain(reason)
        r.all_done.wait(self.cfg.actor.flush_timeout_s + 10)
        r.halt.set()
        r.join()

    def close(self) -> None:
        """Close the learner's trajectory socket."""
        self.endpoint.close()


class LearnerLinks:
    """Rendezvous, trajectories and weights of the learner (or the evaluator).

    ``weights`` given (an in-process bus in --single-process mode) replaces the
    torch.distributed :class:`WeightHub`."""

    def __init__(self, cfg: Config, ctx: zmq.Context, name: str, device: torch.device,
                 known_ids: IdSet | None = None, weights=None):
        self.auth = security.start_authenticator(ctx, cfg)  # before any socket binds
        self.registry = Registry(cfg)
        self.trajectories = TrajectoryLink(cfg, ctx, name, known_ids, self.registry)
        self.weights = weights if weights is not None else WeightHub(cfg, device,
                                                                     self.registry)
        self.rendezvous = Rendezvous(cfg, ctx, self.registry, self._lost)
        self.rendezvous.start()
        log.info("rendezvous at %s", wiring.rendezvous_address(cfg, bind=True))

    def _lost(self, role: str, index: int, incarnation: int) -> None:
        if role == "actor":
            self.trajectories.receiver.retire(index, incarnation)
        else:
            self.weights.lost(index, incarnation)

    @property
    def receiver(self) -> TrajectoryReceiver:
        """The thread that receives and acknowledges episodes."""
        return self.trajectories.receiver

    @property
    def ready(self) -> queue.Queue:
        """Complete groups, ready for training (bounded)."""
        return self.trajectories.ready

    def check(self) -> None:
        """Raise what a serving thread failed with."""
        for name, thread in (("trajectory receiver", self.receiver),
                             ("rendezvous", self.rendezvous)):
            if thread.error is not None:
                raise RuntimeError(f"{name} failed: {thread.error}")

    def admit(self, version: int, model: torch.nn.Module) -> None:
        """Join the servers that registered, giving them ``model`` as ``version``."""
        self.weights.admit(version, model)

    def finish(self, reason: str) -> None:
        """Stop the actors (they deliver what is finished), then the servers."""
        self.trajectories.stop_actors(reason)
        try:
            self.weights.close()
        except Exception as exc:  # a server already gone must not hide the run's results
            log.warning("could not tell the inference servers to stop: %s", exc)

    def close(self) -> None:
        """Stop the rendezvous thread, then close the trajectory socket and the authenticator."""
        self.rendezvous.halt.set()
        self.rendezvous.join(timeout=5)
        self.trajectories.close()
        if self.auth is not None:
            self.auth.stop()
