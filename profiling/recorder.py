"""What one role records while a run is profiled: timed spans and sampled values.

A role makes one :class:`Profiler` (or the inert :data:`OFF` when the run is not
profiled) and marks what it does with ``with prof.span("forward", rows=64):`` or
``prof.add("wait_data", start, end)`` for a span measured by hand, and records values with
``prof.sample("batch_rows", 64)``. Spans carry wall-clock times (``time.time()``), so
the files of several processes line up on one time axis. At exit the role writes
``<log_dir>/profile/<role>.json``; :mod:`profiling.report` merges them.

Cost: two clock reads and one list append a span. Spans shorter than ``min_span_us``
still count in the totals but are not kept for the trace, and at most ``max_events``
spans a role are kept (the rest counted as dropped), so memory stays bounded.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCHEMA = 1


class Profiler:
    """Records spans and samples for one role."""

    enabled = True

    def __init__(self, role: str, max_events: int = 200_000, min_span_us: float = 50.0):
        self.role, self.max_events, self.min_span_s = role, max_events, min_span_us / 1e6
        self.spans: list[tuple] = []  # (name, start_s, dur_s, thread, args)
        self.samples: dict[str, list[tuple[float, float]]] = {}  # name -> [(t, value)]
        self.totals: dict[str, list[float]] = {}  # name -> [count, seconds]
        self.counters: dict[str, float] = {}
        self.meta: dict[str, object] = {}  # the role's settings the report reads
        self.dropped = 0
        self.started = time.time()
        self._cpu0 = _cpu_seconds()
        self._lock = threading.Lock()  # servers record from their weights thread too

    @contextmanager
    def span(self, name: str, **args) -> Iterator[None]:
        """Time the block as a span ``name`` (``args``: the trace event's arguments)."""
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time(), **args)

    def add(self, name: str, start: float, end: float, **args) -> None:
        """A span measured by the caller (wall-clock seconds)."""
        dur = end - start
        with self._lock:
            total = self.totals.setdefault(name, [0, 0.0])
            total[0] += 1
            total[1] += dur
            if dur < self.min_span_s:
                return
            if len(self.spans) >= self.max_events:
                self.dropped += 1
                return
            self.spans.append((name, start, dur, threading.get_ident(), args))

    def sample(self, name: str, value: float, t: float | None = None) -> None:
        """One observation of a distribution (a batch size, a latency, a lag)."""
        with self._lock:
            values = self.samples.setdefault(name, [])
            if len(values) < self.max_events:
                values.append((time.time() if t is None else t, float(value)))
            else:
                self.dropped += 1

    def count(self, name: str, value: float) -> None:
        """Set a running counter (bytes sent on a link, episodes...) to ``value``."""
        self.counters[name] = value

    def write(self, log_dir: str | Path) -> Path:
        """``<log_dir>/profile/<role>.json``, written atomically."""
        folder = Path(log_dir) / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.role}.json"
        with self._lock:
            threads = {tid: i for i, tid in enumerate(dict.fromkeys(s[3] for s in self.spans))}
            data = {"schema": SCHEMA, "role": self.role, "pid": os.getpid(),
                    "started": self.started, "ended": time.time(),
                    "spans": [[n, s, d, threads[t], a] for n, s, d, t, a in self.spans],
                    "samples": self.samples, "totals": self.totals,
                    "counters": self.counters, "meta": self.meta, "dropped": self.dropped,
                    "cpu_s": _cpu_seconds() - self._cpu0, "host": socket.gethostname(),
                    "host_cpus": os.cpu_count()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        return path


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, every thread included."""
    t = os.times()
    return t.user + t.system


class _Off:
    """The profiler of a run that is not profiled: every call does nothing."""

    enabled = False

    @contextmanager
    def span(self, name: str, **args) -> Iterator[None]:
        yield

    def add(self, name: str, start: float, end: float, **args) -> None:
        pass

    def sample(self, name: str, value: float, t: float | None = None) -> None:
        pass

    def count(self, name: str, value: float) -> None:
        pass

    def write(self, log_dir) -> None:
        return None

    @property
    def meta(self) -> dict:
        return {}  # written to and forgotten


OFF = _Off()


def make_profiler(cfg, role: str):
    """A :class:`Profiler` for ``role`` when ``cfg.profile.enabled``, else :data:`OFF`;
    it carries the settings the report needs to judge the figures."""
    p = cfg.profile
    if not p.enabled:
        return OFF
    prof = Profiler(role, p.max_events, p.min_span_us)
    prof.meta.update(max_batch=cfg.inference.max_batch, max_wait_ms=cfg.inference.max_wait_ms,
                     num_actors=cfg.actor.num_actors, num_servers=cfg.inference.num_servers,
                     envs_per_actor=cfg.actor.envs_per_actor,
                     pipeline_stages=cfg.actor.pipeline_stages, warmup_s=p.warmup_s,
                     duration_s=p.duration_s)
    return prof
