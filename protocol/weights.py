"""Weight broadcast from the learner to the inference servers.

Over torch.distributed, in a process group of its own (rank 0 = learner, rank 1+i =
server i; gloo on CPU, NCCL on GPU), so the learner's own data-parallel group is never
involved. One update is: an int64 header [version, elements] broadcast from rank 0, then
one flat buffer per dtype of the model's state_dict (dtypes in name order, tensors in
state_dict order). Version -1 means "the learner has finished". Servers receive on a
background thread and swap the weights in between two batches.
In --single-process mode an :class:`InProcWeightBus` hands the tensors over in memory.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
import time
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SHUTDOWN = -1


def flat_layout(state: dict) -> dict:
    """dtype name -> [(key, numel, shape)] for the state_dict ``state``, dtypes sorted."""
    layout: dict = {}
    for key, t in state.items():
        layout.setdefault(str(t.dtype), []).append((key, t.numel(), tuple(t.shape)))
    return dict(sorted(layout.items()))


def flatten(state: dict, out: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
    """One contiguous buffer per dtype, in :func:`flat_layout` order (written into
    ``out`` when given: the same layout's buffers from an earlier call)."""
    layout = flat_layout(state).values()
    if out is None:
        return [torch.cat([state[k].detach().reshape(-1) for k, _, _ in entries])
                for entries in layout]
    for entries, buf in zip(layout, out):
        torch.cat([state[k].detach().reshape(-1) for k, _, _ in entries], out=buf)
    return out


def unflatten(layout: dict, buffers: list[torch.Tensor]) -> dict:
    """Views of ``buffers`` shaped as the state_dict entries of ``layout``."""
    out = {}
    for entries, buf in zip(layout.values(), buffers):
        offset = 0
        for key, numel, shape in entries:
            out[key] = buf[offset:offset + numel].view(shape)
            offset += numel
    return out


def make_group(store, rank: int, world: int, backend: str, timeout_s: float):
    """A process group over ``store`` for the weights only."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    return dist.ProcessGroupGloo(store, rank, world, timeout)


def join_group(cfg, rank: int, device: torch.device):
    """Join the weights group as ``rank`` (0 = learner); blocks until every rank has joined.

    ``network.weights_backend=auto`` is NCCL when the weights live on CUDA, else gloo.
    """
    from protocol import wiring

    backend = cfg.network.weights_backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("joining the weights group as rank %d of %d (%s)", rank,
             1 + cfg.inference.num_servers, backend)
    return make_group(wiring.weights_store(cfg, rank), rank, 1 + cfg.inference.num_servers,
                      backend, cfg.network.weights_timeout_s)


def _broadcast(group, tensor: torch.Tensor, wait: bool = True):
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    work = group.broadcast([tensor], opts)
    return work.wait() if wait else work


class DistWeightSender:
    """Learner side: broadcast the policy's weights to every server."""

    def __init__(self, group, device: torch.device):
        self.group, self.device = group, device
        self._out: Optional[list[torch.Tensor]] = None  # CPU: buffers kept between sends

    def send(self, version: int, model: torch.nn.Module) -> None:
        state = model.state_dict()
        if self.device.type == "cpu":  # fresh buffers every send cost page faults on CPU
            self._out = flatten(state, self._out) if self._out is not None else flatten(state)
            buffers = self._out
        else:  # CUDA's caching allocator reuses freed blocks; no extra copy kept
            buffers = [b.to(self.device) for b in flatten(state)]
        total = sum(b.numel() for b in buffers)
        header = torch.tensor([version, total], dtype=torch.int64, device=self.device)
        # Queued back to back (a group runs its collectives in order): no round trip
        # between the header and the buffers.
        works = [_broadcast(self.group, t, wait=False) for t in [header, *buffers]]
        for work in works:
            work.wait()

    def close(self) -> None:
        _broadcast(self.group, torch.tensor([SHUTDOWN, 0], dtype=torch.int64,
                                            device=self.device))


class WeightReceiver:
    """Server side: a thread receives updates; ``poll`` returns the newest, if any.

    The state ``poll`` returns is valid until the next ``poll``. On CPU the receiving
    thread fills two sets of buffers in turn (never the one last handed out), so an
    update allocates nothing; on CUDA each update gets fresh buffers from the caching
    allocator instead of keeping a second copy of the model on the device.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.layout = flat_layout(model.state_dict())
        self.device = device
        self._slot: "queue.Queue" = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._sets: list[Optional[list[torch.Tensor]]] = [None, None]
        self._lent: Optional[int] = None  # the set the last poll handed out
        self.finished = threading.Event()
        self.error: Optional[BaseException] = None
        # A byte on this pipe wakes a server waiting for requests (poll ``wake_fd``), so
        # an idle server applies new weights at once rather than at its next timeout.
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def _publish(self, version: int, buffers: list[torch.Tensor],
                 set_index: Optional[int] = None) -> None:
        with self._lock:  # keep only the newest update: a slow server skips versions
            try:
                self._slot.get_nowait()
            except queue.Empty:
                pass
            self._slot.put((version, unflatten(self.layout, buffers), set_index))
        self._wake()

    def _next_buffers(self) -> tuple[Optional[int], list[torch.Tensor]]:
        """Where the next update goes: (set index, buffers)."""
        def empty():
            return [torch.empty(sum(n for _, n, _ in entries),
                                dtype=getattr(torch, name.replace("torch.", "")),
                                device=self.device) for name, entries in self.layout.items()]
        if self.device.type != "cpu":
            return None, empty()
        with self._lock:
            k = 1 if self._lent == 0 else 0
            try:  # an unpolled update in set k is superseded: take it out before writing
                pending = self._slot.get_nowait()
                if pending[2] != k:
                    self._slot.put(pending)
            except queue.Empty:
                pass
            if self._sets[k] is None:
                self._sets[k] = empty()
            return k, self._sets[k]

    def _take(self, item) -> tuple[int, dict]:
        version, state, set_index = item
        self._lent = set_index
        return version, state

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def clear_wake(self) -> None:
        """Empty the wake pipe (the server has seen it)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def poll(self) -> Optional[tuple[int, dict]]:
        """The newest (version, state) received since the last poll, else None."""
        with self._lock:
            try:
                return self._take(self._slot.get_nowait())
            except queue.Empty:
                return None

    def wait_first(self, timeout_s: float) -> tuple[int, dict]:
        """Block until the first update (the learner's initial weights) arrives."""
        deadline = time.monotonic() + timeout_s
        while (got := self.poll()) is None:  # poll: the hand-out is under the lock
            if self.error is not None:
                raise RuntimeError(f"weight receiver failed: {self.error}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no initial weights from the learner within "
                                   f"{timeout_s:.0f}s; is the learner running with the "
                                   "same config?")
            time.sleep(0.005)
        return got


class DistWeightReceiver(WeightReceiver):
    """Receives broadcasts of a :class:`DistWeightSender` on a daemon thread (each a
    ``weights_recv`` span of ``prof``, from the header to the last buffer)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, group, prof=None):
        super().__init__(model, device)
        self.group, self.prof = group, prof
        self._thread = threading.Thread(target=self._loop, name="weights", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        expected = sum(n for entries in self.layout.values() for _, n, _ in entries)
        try:
            while True:
                header = torch.zeros(2, dtype=torch.int64, device=self.device)
                _broadcast(self.group, header)
                version, total = int(header[0]), int(header[1])
                began = time.time()
                if version == SHUTDOWN:
                    break
                if total != expected:
                    raise RuntimeError(
                        f"the learner sent {total} weight elements but this server's model "
                        f"has {expected}; run both roles with the same model config")
                set_index, buffers = self._next_buffers()
                for work in [_broadcast(self.group, b, wait=False) for b in buffers]:
                    work.wait()
                self._publish(version, buffers, set_index)
                if self.prof is not None:
                    self.prof.add("weights_recv", began, time.time(), version=version)
        except BaseException as exc:  # surfaced to the server's main loop
            self.error = exc
        finally:
            self.finished.set()
            self._wake()


class InProcWeightBus:
    """--single-process: the learner's sender and every server's receiver in memory."""

    def __init__(self):
        self.receivers: list[WeightReceiver] = []
        self.last: Optional[tuple[int, list[torch.Tensor]]] = None
        self._lock = threading.Lock()

    def receiver(self, model: torch.nn.Module, device: torch.device) -> WeightReceiver:
        """A receiver for one server; it gets the last update sent, if any, at once."""
        r = WeightReceiver(model, device)
        with self._lock:
            self.receivers.append(r)
            if self.last is not None:
                r._publish(self.last[0], [b.to(device).clone() for b in self.last[1]])
        return r

    def send(self, version: int, model: torch.nn.Module) -> None:
        buffers = flatten(model.state_dict())
        with self._lock:
            self.last = (version, buffers)
            for r in self.receivers:
                r._publish(version, [b.to(r.device).clone() for b in buffers])

    def close(self) -> None:
        for r in self.receivers:
            r.finished.set()
            r._wake()
