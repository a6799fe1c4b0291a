"""The learner's side of the weights: one 2-rank torch.distributed group per server.

A server that registers gets a new *generation*; the learner forms that group with it
(rank 0 = learner, rank 1 = server) between two updates and sends it the current
weights before it serves. Every ``learner.sync_every`` updates the weights go to every
joined server at once (the broadcasts are queued on all groups, then awaited). A group
whose server died fails its next broadcast (or the rendezvous reports the death first):
it is dropped, and the rest carry on; the server's next start joins a new group.
Separate groups per server cost the learner one copy of the bytes per server (a shared
group would broadcast once), and let a server die and return without stopping the rest.
Where the learner and a server share a GPU, the group carries the header only and the
buffers go through memory both map (links/shared_weights.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import torch

from configs import Config
from links.rendezvous import Join, Registry
from links import wiring
from links.weights import (
    KEEPALIVE, SHUTDOWN, all_finite, broadcast, flatten, form_link, serving_dtype,
    synced_layout, synced_state,
)

log = logging.getLogger(__name__)


class WeightHub:
    """Joins servers as they register and sends them the policy's weights."""

    def __init__(self, cfg: Config, device: torch.device, registry: Registry):
        self.cfg, self.device, self.registry = cfg, device, registry
        self.store = wiring.weights_store(cfg, learner=True)
        self.links: dict[int, tuple[Join, object]] = {}
        self._lost: set[tuple[int, int]] = set()  # (index, incarnation) reported dead
        self._lock = threading.Lock()
        self._out: list[torch.Tensor] | None = None
        self._formed: "queue.SimpleQueue[tuple[Join, object]]" = queue.SimpleQueue()
        self._last_sent: dict[int, float] = {}  # server -> monotonic time of its last send
        self.joined = self.failed = self.keepalives = 0

    def lost(self, index: int, incarnation: int) -> None:
        """The rendezvous found server ``index`` dead (called on its thread)."""
        with self._lock:
            self._lost.add((index, incarnation))

    def admit(self, version: int, model: torch.nn.Module) -> None:
        """Start forming the groups of servers that registered (each on a thread: a server
        that dies before it joins must not hold up training), send ``model`` to the
        ones whose group has formed, and a keepalive on every link idle too long."""
        self._forget_lost()
        self._keepalive()
        while not self.registry.joins.empty():
            join = self.registry.joins.get_nowait()
            if self.registry.current(join):
                layout = synced_layout(model, serving_dtype(self.cfg))
                threading.Thread(target=self._form, args=(join, layout), daemon=True,
                                 name=f"weights-join-{join.index}").start()
        while not self._formed.empty():
            join, link = self._formed.get_nowait()
            if not self.registry.current(join):
                link.close()
                continue  # superseded by a newer registration of the same server
            self._unlink(join.index)
            self.links[join.index] = (join, link)
            self.joined += 1
            if self._send([join.index], version, model):
                log.info("inference server %d joined (weights group %d%s) and has version %d, "
                         "%.1f s after it registered", join.index, join.generation,
                         ", payload through shared memory" if link.shared is not None else "",
                         version, self.registry.now() - join.registered_at)

    def _form(self, join: Join, layout: dict) -> None:
        store = wiring.weights_group_store(self.cfg, self.store, join.index, join.generation)
        try:
            link = form_link(store, 0, self.cfg, self.device, layout)
        except Exception as exc:  # the server died before it joined
            log.warning("inference server %d did not join its weights group %d: %s",
                        join.index, join.generation, str(exc).splitlines()[0])
            return
        self._formed.put((join, link))

    def send(self, version: int, model: torch.nn.Module) -> None:
        """Broadcast ``model`` as ``version`` to every joined server."""
        self._forget_lost()
        self._send(list(self.links), version, model)

    def _keepalive(self) -> None:
        now = time.monotonic()
        idle = [i for i in self.links
                if now - self._last_sent.get(i, now) > self.cfg.network.weights_timeout_s / 4]
        if idle:
            header = torch.tensor([KEEPALIVE, 0], dtype=torch.int64, device=self.device)
            self.keepalives += self._send_tensors(idle, [header])

    def _forget_lost(self) -> None:
        with self._lock:
            lost, self._lost = self._lost, set()
        for index, incarnation in lost:
            link = self.links.get(index)
            if link is not None and link[0].incarnation == incarnation:
                self._unlink(index)

    def _unlink(self, index: int) -> None:
        """Forget server ``index``'s link (and free its shared buffers), if any."""
        gone = self.links.pop(index, None)
        if gone is not None:
            gone[1].close()

    def _buffers(self, model: torch.nn.Module) -> list[torch.Tensor]:
        state = synced_state(model, serving_dtype(self.cfg))
        if self.device.type == "cpu":  # fresh buffers every send cost page faults on CPU
            self._out = flatten(state, self._out) if self._out is not None else flatten(state)
            return self._out
        return [b.to(self.device) for b in flatten(state)]  # the caching allocator reuses

    def _send(self, indices: list[int], version: int, model: torch.nn.Module) -> int:
        if not indices:
            return 0
        buffers = self._buffers(model)
        if not all_finite(buffers):
            log.error("version %d has non-finite weights (NaN or inf): not sent; the servers "
                      "keep the weights they have", version)
            return 0
        header = torch.tensor([version, sum(b.numel() for b in buffers)], dtype=torch.int64,
                              device=self.device)
        return self._send_tensors(indices, [header, *buffers])

    def _send_tensors(self, indices: list[int], tensors: list[torch.Tensor]) -> int:
        # Queued on every group first (each runs its collectives in order), then awaited:
        # the servers receive at the same time, with no round trip between the tensors.
        # A link through shared memory gets the payload written into its buffers, the
        # header, then waits for the server's acknowledgement that it has copied them.
        pending = {}
        for i in indices:
            link = self.links[i][1]
            try:
                if link.shared is not None and len(tensors) > 1:
                    for theirs, mine in zip(link.shared.buffers, tensors[1:]):
                        theirs.copy_(mine)
                    if self.device.type == "cuda":
                        torch.cuda.current_stream(self.device).synchronize()
                    ack = torch.zeros_like(tensors[0])
                    pending[i] = [broadcast(link.group, tensors[0], wait=False),
                                  broadcast(link.group, ack, wait=False, root=1)]
                else:
                    pending[i] = [broadcast(link.group, t, wait=False) for t in tensors]
            except Exception as exc:
                self._drop(i, exc)
        done = 0
        for i, works in pending.items():
            try:
                for work in works:
                    work.wait()
                done += 1
                self._last_sent[i] = time.monotonic()
            except Exception as exc:
                self._drop(i, exc)
        return done

    def _drop(self, index: int, exc: Exception) -> None:
        self.failed += 1
        self._unlink(index)
        log.warning("weights to inference server %d failed (%s): it is left out until it "
                    "registers again", index, str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__)

    def close(self) -> None:
        """Tell every joined server that the learner has finished."""
        bye = torch.tensor([SHUTDOWN, 0], dtype=torch.int64, device=self.device)
        for i in list(self.links):
            try:
                broadcast(self.links[i][1].group, bye)
            except Exception as exc:
                log.warning("could not tell inference server %d to stop: %s", i,
                            str(exc).splitlines()[0])
            self._unlink(i)
