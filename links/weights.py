"""Weight broadcast from the learner to the inference servers.

Over torch.distributed, one 2-rank process group per server (rank 0 = learner, rank 1 =
the server; NCCL between two GPUs, else gloo: :func:`group_backend`; links/weight_hub.py
forms them), so the learner's own data-parallel group is never involved and a server can
die and rejoin. One update is: an int64 header [version, elements] broadcast from rank 0, then
one flat buffer per dtype of the model's state_dict without its frozen parameters
(:func:`synced_state`: a LoRA model sends its adapter and trained heads, the servers keep
the base they loaded; dtypes in name order, tensors in state_dict order). Version -1
means "the learner has finished"; version -2 is a keepalive (nothing follows), sent on a
link idle for a quarter of ``network.weights_timeout_s``. Servers receive on a
background thread and swap the weights in between two batches. Where both ends share a
GPU the buffers go through memory both map instead, the group carrying the header and a
server's acknowledgement (:func:`form_link`, links/shared_weights.py).
In --single-process mode an :class:`InProcWeightBus` hands the tensors over in memory.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from links.shared_weights import SharedBuffers, accept, offer, wants_shared

log = logging.getLogger(__name__)
SHUTDOWN = -1  # header version: the learner has finished
# Header version of a keepalive: nothing follows. The learner sends one on a link idle for
# a quarter of network.weights_timeout_s, so a slow update (minutes, when most GRPO groups
# are filtered out) does not time out the server's waiting receive.
KEEPALIVE = -2


def synced_state(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> dict:
    """What one update carries: the state_dict without the frozen parameters
    (``requires_grad`` False, e.g. a LoRA model's base weights), which never change and
    which each server loaded itself from ``model.model_path``; with ``dtype`` (the
    servers', :func:`serving_dtype`) the floating-point parameters cast to it, buffers as
    they are. Learner and server build the model from one config, so both ends name the
    same entries."""
    return {key: value.to(sent) for key, value, sent in _synced_entries(model, dtype)}


def synced_bytes(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    """Bytes of :func:`synced_state` (one update to one server), without making it."""
    return sum(value.numel() * sent.itemsize for _, value, sent in _synced_entries(model, dtype))


def synced_layout(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> dict:
    """:func:`flat_layout` of :func:`synced_state`, without making it."""
    layout: dict = {}
    for key, value, sent in _synced_entries(model, dtype):
        layout.setdefault(str(sent), []).append((key, value.numel(), tuple(value.shape)))
    return dict(sorted(layout.items()))


def _synced_entries(model: torch.nn.Module, dtype: Optional[torch.dtype]):
    """(key, tensor, dtype it is sent in) of each entry one update carries."""
    params = dict(model.named_parameters())
    for key, value in model.state_dict().items():
        p = params.get(key)
        if p is not None and not p.requires_grad:
            continue
        cast = p is not None and dtype is not None and value.is_floating_point()
        yield key, value, dtype if cast else value.dtype


def serving_dtype(cfg) -> Optional[torch.dtype]:
    """The servers' parameter dtype when it is not the learner's fp32 (``inference.dtype``)."""
    return torch.bfloat16 if cfg.inference.dtype == "bf16" else None


def state_bytes(state: dict) -> int:
    """Bytes of the tensors of ``state``."""
    return sum(t.numel() * t.element_size() for t in state.values())


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


def all_finite(buffers: list[torch.Tensor]) -> bool:
    """Whether every floating-point value of ``buffers`` is finite (what may be sent)."""
    return all(bool(torch.isfinite(b).all()) for b in buffers if b.is_floating_point())


def unflatten(layout: dict, buffers: list[torch.Tensor]) -> dict:
    """Views of ``buffers`` shaped as the state_dict entries of ``layout``."""
    out = {}
    for entries, buf in zip(layout.values(), buffers):
        offset = 0
        for key, numel, shape in entries:
            out[key] = buf[offset:offset + numel].view(shape)
            offset += numel
    return out


def make_group(store, rank: int, world: int, backend: str, timeout_s: float, host: str = ""):
    """A process group over ``store`` for the weights only; gloo binds ``host`` when given
    (else the address of this machine's hostname)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        # A broadcast to a server that died times out after ``timeout_s``: NCCL's watchdog
        # then aborts this group's communicator and the wait raises (the hub drops that
        # server, as on gloo), instead of tearing the whole learner down (its default).
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    if not host:
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(store, rank, world, opts)


class SharedGPUError(RuntimeError):
    """``network.weights_backend=nccl`` between two ranks on one GPU, which NCCL refuses."""


def gpu_identity(device: torch.device) -> str:
    """The physical device behind ``device``: its GPU's UUID (the same GPU seen from two
    processes, whatever their CUDA_VISIBLE_DEVICES), or ``cpu``."""
    if device.type != "cuda":
        return "cpu"
    return str(torch.cuda.get_device_properties(device).uuid)


def group_backend(store, rank: int, cfg, device: torch.device) -> str:
    """The backend of one two-rank weights group, the same at both ends: both publish
    :func:`gpu_identity` in the group's store; NCCL only between two different GPUs.

    NCCL refuses two ranks of one communicator on one GPU (``invalid usage``: measured on
    an H200, benchmarks/RESULTS.md, "The GPU check"), which is what a learner and a server
    on one single-GPU host are: there ``auto`` takes gloo, and an explicit ``nccl`` raises
    :class:`SharedGPUError`. A CPU end makes the group gloo too."""
    mine = gpu_identity(device)
    store.set(f"device/{rank}", mine)
    theirs = store.get(f"device/{1 - rank}").decode()
    requested = cfg.network.weights_backend
    if requested == "gloo":
        return "gloo"
    if "cpu" in (mine, theirs) or mine == theirs:
        if requested == "nccl":
            why = "one end is on the CPU" if "cpu" in (mine, theirs) else \
                f"both ends are on the GPU {mine}"
            raise SharedGPUError(f"network.weights_backend=nccl, but {why} and NCCL needs two "
                                 "GPUs: set network.weights_backend=auto (gloo there)")
        return "gloo"
    return "nccl"


@dataclass
class Link:
    """One server's weights group, and the buffers both ends map when the payload goes
    through shared memory (links/shared_weights.py; None: it goes over the group)."""

    group: object
    shared: Optional[SharedBuffers] = None

    def close(self) -> None:
        """Free the shared buffers, if any; abort an NCCL group's communicator (its peer
        may be dead: a plain destruction would wait for it). A gloo group goes with its
        last reference."""
        if self.shared is not None:
            self.shared.close()
        if self.group.name() == "nccl":
            try:
                self.group.abort()
            except Exception as exc:  # already aborted by the watchdog
                log.debug("aborting an NCCL weights group: %s", exc)


def form_link(store, rank: int, cfg, device: torch.device, layout: dict) -> Link:
    """Both ends of a weights group: its backend (:func:`group_backend`), the group, and
    the shared payload where :func:`~links.shared_weights.wants_shared` says so
    (``layout``: the learner's synced layout in the servers' dtype; the server's own)."""
    from links import wiring

    backend = group_backend(store, rank, cfg, device)
    group = make_group(store, rank, 2, backend, cfg.network.weights_timeout_s,
                       wiring.gloo_host(cfg))
    shared = None
    if wants_shared(store, rank, cfg, gpu_identity(device)):
        shared = (offer if rank == 0 else accept)(store, layout, device)
    return Link(group, shared)


def join_group(cfg, index: int, generation: int, device: torch.device,
               layout: dict) -> Link:
    """Server ``index``: join its weights group ``generation`` (rank 1 of 2; the learner,
    rank 0, forms it when it has seen the server's registration, between two updates:
    so the server waits for it up to ``network.learner_wait_s``)."""
    from links import wiring

    wait_s, began = cfg.network.learner_wait_s, time.monotonic()
    store = wiring.weights_group_store(cfg, wiring.weights_store(cfg, False, wait_s), index,
                                       generation, wait_s)
    link = form_link(store, 1, cfg, device, layout)
    log.info("joined weights group %d (%s%s) in %.1f s", generation, link.group.name(),
             ", payload through shared memory" if link.shared is not None else "",
             time.monotonic() - began)
    return link


def broadcast(group, tensor: torch.Tensor, wait: bool = True, root: int = 0):
    """Broadcast ``tensor`` from rank ``root`` of ``group`` (0: the learner; 1: a server's
    acknowledgement); the work if not ``wait``."""
    opts = dist.BroadcastOptions()
    opts.rootRank = root
    work = group.broadcast([tensor], opts)
    return work.wait() if wait else work


class WeightReceiver:
    """Server side: a thread receives updates; ``poll`` returns the newest, if any.

    The state ``poll`` returns is valid until the next ``poll``. On CPU the receiving
    thread fills two sets of buffers in turn (never the one last handed out), so an
    update allocates nothing; on CUDA each update gets fresh buffers from the caching
    allocator instead of keeping a second copy of the model on the device.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.layout = synced_layout(model)
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
    """Receives the learner's broadcasts (links/weight_hub.py) on a daemon thread (each a
    ``weights_recv`` span of ``prof``, from the header to the last buffer). ``link`` is a
    :class:`Link`, or a function of the receiver's layout that joins one (called on the
    thread, so a server keeps serving while it joins)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, link, prof=None):
        super().__init__(model, device)
        self.link, self.prof = link, prof
        self._thread = threading.Thread(target=self._loop, name="weights", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        expected = sum(n for entries in self.layout.values() for _, n, _ in entries)
        try:
            if callable(self.link):
                self.link = self.link(self.layout)
            group, shared = self.link.group, self.link.shared
            while True:
                header = torch.zeros(2, dtype=torch.int64, device=self.device)
                broadcast(group, header)
                version, total = int(header[0]), int(header[1])
                began = time.time()
                if version == SHUTDOWN:
                    break
                if version == KEEPALIVE:
                    continue
                if total != expected:
                    raise RuntimeError(
                        f"the learner sent {total} weight elements but this server's model "
                        f"has {expected}; run both roles with the same model config")
                set_index, buffers = self._next_buffers()
                if shared is not None:  # copied out of the learner's, then acknowledged
                    for mine, theirs in zip(buffers, shared.buffers):
                        mine.copy_(theirs)
                    if self.device.type == "cuda":
                        torch.cuda.current_stream(self.device).synchronize()
                    broadcast(group, header, root=1)
                else:
                    for work in [broadcast(group, b, wait=False) for b in buffers]:
                        work.wait()
                self._publish(version, buffers, set_index)
                if self.prof is not None:
                    self.prof.add("weights_recv", began, time.time(), version=version)
        except BaseException as exc:  # surfaced to the server's main loop
            self.error = exc
        finally:
            if isinstance(self.link, Link):
                self.link.close()
            self.finished.set()
            self._wake()


class InProcWeightBus:
    """--single-process: the learner's sender and every server's receiver in memory."""

    def __init__(self, dtype: Optional[torch.dtype] = None):
        self.dtype = dtype  # the servers' parameters' (serving_dtype)
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
        """Hand ``model``'s state as ``version`` to every receiver (a copy each, on its
        device); non-finite weights are not handed over."""
        buffers = flatten(synced_state(model, self.dtype))
        if not all_finite(buffers):
            log.error("version %d has non-finite weights (NaN or inf): not sent", version)
            return
        with self._lock:
            self.last = (version, buffers)
            for r in self.receivers:
                r._publish(version, [b.to(r.device).clone() for b in buffers])

    def admit(self, version: int, model: torch.nn.Module) -> None:
        """Nothing to join: every receiver gets every send."""

    def lost(self, index: int, incarnation: int) -> None:
        """A server thread cannot die alone in one process."""

    def close(self) -> None:
        """Tell every receiver that the learner has finished."""
        for r in self.receivers:
            r.finished.set()
            r._wake()
