"""The weights' payload through memory both ends map, when the learner and a server share
a device: a GPU (CUDA IPC), or with ``network.weights_shared: same_host`` the CPU of one host (a
file in /dev/shm).

NCCL refuses two ranks of one group on one GPU, and gloo between them copies every byte
through host memory and TCP (a few hundred times slower than a device copy for a 3B
model: benchmarks/RESULTS.md, "The GPU check"). Here the two-rank weights group
(links/weights.py) still carries the header, keepalives, the end and the failures, but
an update's buffers go through shared memory::

    learner: flatten the state into the shared buffers -> header [version, n] ->
             wait for the server's acknowledgement (a broadcast from rank 1)
    server:  header -> copy the shared buffers into its own -> acknowledge

so the learner never overwrites a version a server is still copying, and a server that
dies fails the acknowledgement like any other broadcast (the group is dropped).

Set-up, in the group's store (no pickle: handles are hex and integers in JSON): both
ends publish where they run (:func:`wants_shared` decides the same at both); the learner
creates the buffers and publishes their handles; the server maps them and answers
``attached`` 1 or 0 (a server that cannot map them, e.g. another container's /dev/shm,
takes the payload over the group instead, and so does the learner for that server).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)
SHM = Path("/dev/shm")


def _host_identity() -> str:
    """This machine's boot: equal for two processes of one host (and its /dev/shm)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return os.uname().nodename


def wants_shared(store, rank: int, cfg, device_identity: str) -> bool:
    """Whether this weights group's payload goes through shared memory, the same answer
    at both ends: ``network.weights_shared`` ``auto`` between two processes on one GPU,
    ``same_host`` also between two CPU processes of one host, ``never`` never."""
    mode = cfg.network.weights_shared
    mine = [device_identity, _host_identity()]
    store.set(f"place/{rank}", json.dumps(mine))
    theirs = json.loads(store.get(f"place/{1 - rank}").decode())
    if mode == "never" or mine != theirs:
        return False
    return device_identity != "cpu" or mode == "same_host"


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


class SharedBuffers:
    """One flat buffer per dtype of a weights ``layout`` (links.weights.flat_layout),
    in memory another process maps: made by the learner (:meth:`create`), mapped by the
    server (:meth:`attach`) from :meth:`export`'s description."""

    def __init__(self, buffers: list[torch.Tensor], files: list[Path], handles: list):
        self.buffers, self.handles = buffers, handles
        self.files = files  # the learner's /dev/shm files, until unlinked (a server: none)

    @classmethod
    def create(cls, layout: dict, device: torch.device) -> "SharedBuffers":
        """New buffers on ``device`` (a GPU's memory, else files in /dev/shm)."""
        buffers, files, handles = [], [], []
        for name, entries in layout.items():
            numel = sum(n for _, n, _ in entries)
            if device.type == "cuda":
                buf = torch.empty(numel, dtype=_dtype(name), device=device)
                handles.append(_cuda_handle(buf))
            else:
                path = SHM / f"chunkrl-weights-{uuid.uuid4().hex}"
                buf = torch.from_file(str(path), shared=True, size=numel, dtype=_dtype(name))
                files.append(path)
                handles.append(str(path))
            buffers.append(buf)
        return cls(buffers, files, handles)

    def export(self) -> str:
        """What :meth:`attach` needs, as JSON."""
        return json.dumps({"kind": "cuda" if self.buffers and self.buffers[0].is_cuda
                           else "shm", "handles": self.handles})

    @classmethod
    def attach(cls, description: str, layout: dict, device: torch.device) -> "SharedBuffers":
        """Map the learner's buffers (raises if this process cannot)."""
        found = json.loads(description)
        buffers = []
        for handle, (name, entries) in zip(found["handles"], layout.items()):
            numel = sum(n for _, n, _ in entries)
            if found["kind"] == "cuda":
                buf = _from_cuda_handle(handle, _dtype(name), device)
            else:
                size = Path(handle).stat().st_size  # raises where this /dev/shm lacks it
                if size != numel * _dtype(name).itemsize:
                    raise ValueError(f"{handle} has {size} bytes, not {numel} elements of "
                                     f"{name}: run both roles with the same model config")
                buf = torch.from_file(handle, shared=True, size=numel, dtype=_dtype(name))
            if buf.numel() != numel:
                raise ValueError(f"shared weights buffer of {buf.numel()} elements, expected "
                                 f"{numel}: run both roles with the same model config")
            buffers.append(buf)
        return cls(buffers, [], found["handles"])

    def unlink(self) -> None:
        """The learner removes its /dev/shm files (the mappings stay valid)."""
        for path in self.files:
            try:
                path.unlink()
            except OSError:
                pass
        self.files = []

    def close(self) -> None:
        """Drop the buffers (their memory goes when both ends have)."""
        self.unlink()
        self.buffers = []


def _cuda_handle(buf: torch.Tensor) -> list:
    """``UntypedStorage._share_cuda_`` (what torch.multiprocessing sends), JSON-ready."""
    device, handle, size, offset, ref_handle, ref_offset, event, sync = \
        buf.untyped_storage()._share_cuda_()
    return [device, handle.hex(), size, offset, ref_handle.hex(), ref_offset,
            event.hex() if event else "", bool(sync), buf.storage_offset(), buf.numel()]


def _from_cuda_handle(h: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The tensor another process shared with :func:`_cuda_handle`."""
    torch.cuda._lazy_init()
    storage = torch.UntypedStorage._new_shared_cuda(
        h[0], bytes.fromhex(h[1]), h[2], h[3], bytes.fromhex(h[4]), h[5],
        bytes.fromhex(h[6]) if h[6] else None, h[7])
    out = torch.empty(0, dtype=dtype, device=device)
    return out.set_(storage, h[8], (h[9],), (1,))


def offer(store, layout: dict, device: torch.device) -> Optional[SharedBuffers]:
    """The learner's side of the set-up: make and publish the buffers; None (the payload
    goes over the group) when they cannot be made or the server could not map them."""
    try:
        shared = SharedBuffers.create(layout, device)
    except Exception as exc:  # e.g. /dev/shm too small
        log.warning("shared weights buffers not made (%s): the weights go over the group",
                    str(exc).splitlines()[0])
        store.set("shared/handles", "")
        return None
    store.set("shared/handles", shared.export())
    attached = store.get("shared/attached") == b"1"
    shared.unlink()  # the server has mapped the files, or will not: none outlives a crash
    if not attached:
        shared.close()
        return None
    return shared


def accept(store, layout: dict, device: torch.device) -> Optional[SharedBuffers]:
    """The server's side: map the learner's buffers and say whether it could."""
    description = store.get("shared/handles").decode()
    shared = None
    if description:
        try:
            shared = SharedBuffers.attach(description, layout, device)
        except Exception as exc:
            log.warning("cannot map the learner's shared weights (%s): they come over the "
                        "group", str(exc).splitlines()[0])
    store.set("shared/attached", "1" if shared is not None else "0")
    return shared
