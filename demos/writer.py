"""Writing finished episodes to disk on a thread of their own, one file each, atomically.

Each episode becomes ``folder/<instruction>/state_<initial-state id>.hdf5``, a complete
file in LIBERO's layout with one demo (:mod:`demos.layout`). It is written to a hidden
temporary file, flushed to disk and renamed into place, so a crash (of the writer, the
actor or the machine) loses at most the episodes not yet renamed, and never corrupts one
that was: the reader reports a leftover temporary file by its path. A record run plays
each initial state once, so the name is the episode's: an actor restarted after a crash
records its share again, and a state recorded twice keeps one file, the newer.

The actor hands an episode over with :meth:`DemoWriter.put` and goes on stepping; the
writer thread compresses and writes. At most ``max_pending`` episodes wait; beyond that
``put`` waits for the writer (a disk slower than the simulators holds the actor back
rather than filling its memory).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import h5py

from demos.layout import Demo, slug, write_demo

log = logging.getLogger(__name__)
TMP_SUFFIX = ".tmp"


def write_file(path: Path, demo: Demo, attributes: dict, compression: int) -> Path:
    """``demo`` as a one-demo LIBERO-layout file at ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for key, value in attributes.items():
            data.attrs[key] = value
        write_demo(data.create_group("demo_0"), demo, compression)
    with open(tmp, "rb+") as raw:  # h5py's close flushes HDF5's buffers, not the disk's
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return path


class DemoWriter:
    """A writer thread for one actor's episodes.

    ``attributes(demo)`` gives the file attributes of a demo (the env's name, arguments
    and problem). Counters: ``written``, ``failed``; ``waited_s``, the time ``put`` spent
    waiting for the writer."""

    def __init__(self, folder: Path, attributes: Callable[[Demo], dict], compression: int = 1,
                 max_pending: int = 16):
        self.folder, self.attributes, self.compression = Path(folder), attributes, compression
        self.pending: "queue.Queue[Demo | None]" = queue.Queue(max_pending)
        self.written = self.failed = 0
        self.waited_s = 0.0
        self.paths: list[Path] = []
        self.from_state: dict[Path, int] = {}  # episodes written per initial state
        self._thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)
        self._thread.start()

    def path_for(self, demo: Demo) -> Path:
        """Where ``demo`` goes: ``<folder>/<instruction slug>/state_<init_state_id>.hdf5``,
        with ``_<n>`` before the suffix for this writer's n-th later episode from that
        state (a group's episodes share one)."""
        stem = self.folder / slug(demo.instruction) / f"state_{demo.init_state_id:06d}"
        n = self.from_state.get(stem, 0)
        self.from_state[stem] = n + 1
        return stem.with_name(f"{stem.name}_{n}.hdf5" if n else f"{stem.name}.hdf5")

    def put(self, demo: Demo) -> None:
        """Queue ``demo`` for writing (waits only while ``max_pending`` are queued)."""
        began = time.monotonic()
        self.pending.put(demo)
        self.waited_s += time.monotonic() - began

    def close(self, timeout_s: float = 120.0) -> None:
        """Write what is queued, then stop the thread."""
        self.pending.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the demo writer did not finish within %.0f s; %d episodes unwritten",
                      timeout_s, self.pending.qsize())

    def _run(self) -> None:
        while True:
            demo = self.pending.get()
            if demo is None:
                return
            path = self.path_for(demo)
            try:
                self.paths.append(write_file(path, demo, self.attributes(demo),
                                             self.compression))
                self.written += 1
            except (OSError, ValueError, TypeError) as err:  # a full disk, a bad array
                self.failed += 1
                log.error("episode %d not written to %s: %s", demo.episode_id, path, err)
