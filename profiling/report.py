"""Merge the roles' profiles into one report, a table naming the bottleneck, and a trace.

    python -m profiling.report RUN_LOG_DIR     # profiles gathered from several hosts

Input: ``<log_dir>/profile/<role>.json`` of every role (:mod:`profiling.recorder`).
Output, in ``log_dir``: ``profile_report.json`` (every figure below), ``trace.json``
(Chrome trace event format: open it in ``chrome://tracing`` or https://ui.perfetto.dev)
and the table, returned as text.

Rates and fractions are taken over a steady window: from ``warmup_s`` after the last
actor began stepping to the end of training (the learner's ``trained_until``). Spans are
clipped to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from profiling.diagnosis import diagnose


def load_profiles(log_dir: Path) -> dict[str, dict]:
    """role name -> its profile, for every ``profile/*.json`` under ``log_dir``."""
    folder = Path(log_dir) / "profile"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no profiles in {folder}: was the run started with "
                                "--profile (profile.enabled=true)?")
    return {f.stem: json.loads(f.read_text()) for f in files}


def _by_kind(profiles: dict) -> tuple[list, list, dict | None]:
    actors = [p for r, p in profiles.items() if r.startswith("actor")]
    servers = [p for r, p in profiles.items() if r.startswith("inference")]
    return actors, servers, profiles.get("learner")


def steady_window(profiles: dict, warmup_s: float) -> tuple[float, float]:
    """(start, end) wall-clock seconds of the window rates are measured over."""
    actors, _, learner = _by_kind(profiles)
    firsts = [min((s[1] for s in p["spans"] if s[0] == "env_step"), default=p["started"])
              for p in actors] or [p["started"] for p in profiles.values()]
    if learner:  # training's end, not the drain of the actors after it
        end = learner["meta"].get("trained_until", learner["ended"])
    else:
        end = min(p["ended"] for p in profiles.values())
    start = max(firsts) + warmup_s
    if end - start < 1.0:  # too short a run for its warm-up: use what there is
        start = max(firsts)
    return start, max(end, start + 1e-6)


def _spans(p: dict, name: str) -> list:
    return [s for s in p["spans"] if s[0] == name]


def _busy(p: dict, name: str, t0: float, t1: float) -> float:
    """Seconds of ``name`` spans inside [t0, t1]."""
    return sum(max(0.0, min(s[1] + s[2], t1) - max(s[1], t0)) for s in _spans(p, name))


def _values(p: dict, name: str, t0: float = -np.inf, t1: float = np.inf) -> np.ndarray:
    return np.array([v for t, v in p["samples"].get(name, []) if t0 <= t <= t1], float)


def _dist(values, *qs: int) -> dict:
    values = np.asarray(values, float)
    if not len(values):
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def actor_stats(actors: list, t0: float, t1: float) -> dict:
    """Env steps/s, chunk-step and observe times, busy fractions and action round trips
    of ``actors`` between ``t0`` and ``t1``."""
    span = t1 - t0
    steps = sum(_values(p, "env_steps", t0, t1).sum() for p in actors)
    durations = [s[2] * 1e3 for p in actors for s in _spans(p, "env_step") if t0 <= s[1] <= t1]
    step_s = sum(_busy(p, "env_step", t0, t1) for p in actors)
    return {
        "count": len(actors),
        "env_steps_per_s": steps / span,
        "chunk_step_ms": _dist(durations, 50, 99),
        "observe_send_ms": _dist([s[2] * 1e3 for p in actors for s in _spans(p, "observe_send")
                                  if t0 <= s[1] <= t1], 50, 99),
        "ms_per_env_step": step_s * 1e3 / steps if steps else None,
        "stepping_fraction": _mean(_busy(p, "env_step", t0, t1) / span for p in actors),
        "observe_fraction": _mean(_busy(p, "observe_send", t0, t1) / span for p in actors),
        "wait_action_fraction": _mean(_busy(p, "wait_action", t0, t1) / span for p in actors),
        "blocked_by_learner_fraction": _mean(
            _busy(p, "blocked_by_learner", t0, t1) / span for p in actors),
        "action_rtt_ms": _dist(np.concatenate(
            [_values(p, "action_rtt_ms", t0, t1) for p in actors] or [[]]), 50, 99),
    }


def server_stats(servers: list, t0: float, t1: float) -> dict:
    """Batches and chunks/s, batch fill, queueing and compute latency, queue depth and
    busy fraction of ``servers`` between ``t0`` and ``t1``."""
    span = t1 - t0
    rows = np.concatenate([_values(p, "batch_rows", t0, t1) for p in servers] or [[]])
    queue = np.concatenate([_values(p, "queue_ms", t0, t1) for p in servers] or [[]])
    compute = np.concatenate([_values(p, "compute_ms", t0, t1) for p in servers] or [[]])
    n = min(len(queue), len(compute))  # recorded in pairs, one pair a request
    depth = np.concatenate([_values(p, "queue_requests", t0, t1) for p in servers] or [[]])
    max_batch = servers[0]["meta"].get("max_batch", 0) if servers else 0
    return {
        "count": len(servers), "max_batch": max_batch,
        "batches_per_s": len(rows) / span, "chunks_per_s": float(rows.sum()) / span,
        "batch_rows": {"mean": float(rows.mean()) if len(rows) else None,
                       **_dist(rows, 50, 99)},
        "fill_ratio": float(rows.mean()) / max_batch if len(rows) and max_batch else None,
        "latency_ms": {"queue": _dist(queue, 50, 99), "compute": _dist(compute, 50, 99),
                       "total": _dist(queue[:n] + compute[:n], 50, 99)},
        "queue_depth_requests": {**_dist(depth, 50, 99),
                                 "max": float(depth.max()) if len(depth) else None},
        "busy_fraction": _mean(_busy(p, "forward", t0, t1) / span for p in servers),
    }


def learner_stats(learner: dict | None, t0: float, t1: float) -> dict:
    """Samples and updates/s, update time and busy and waiting fractions of the learner
    between ``t0`` and ``t1``, and its policy lag over the whole profile ({} without
    a learner profile)."""
    if learner is None:
        return {}
    span = t1 - t0
    updates = [s for s in _spans(learner, "update") if t0 <= s[1] <= t1]
    lag = _values(learner, "policy_lag")
    counts = {str(int(k)): int(v) for k, v in zip(*np.unique(lag, return_counts=True))}
    return {
        "samples_per_s": float(_values(learner, "samples", t0, t1).sum()) / span,
        "updates_per_s": len(updates) / span,
        "update_ms": _dist([s[2] * 1e3 for s in updates], 50, 99),
        "busy_fraction": (_busy(learner, "update", t0, t1)
                          + _busy(learner, "broadcast", t0, t1)) / span,
        "wait_data_fraction": _busy(learner, "wait_data", t0, t1) / span,
        "policy_lag": {"mean": float(lag.mean()) if len(lag) else None,
                       **_dist(lag, 50, 90), "max": float(lag.max()) if len(lag) else None,
                       "histogram": counts},
    }


def weight_stats(learner: dict | None, servers: list) -> dict:
    """Weight broadcasts: their count and size, and send, receive and apply times (ms)."""
    sends = _spans(learner, "broadcast") if learner else []
    recv = [s[2] * 1e3 for p in servers for s in _spans(p, "weights_recv")]
    pause = [s[2] * 1e3 for p in servers for s in _spans(p, "weights_apply")]
    return {
        "broadcasts": len(sends),
        "bytes_per_broadcast": sends[0][4].get("bytes") if sends else None,
        "broadcast_ms": {**_dist([s[2] * 1e3 for s in sends], 50),
                         "max": max((s[2] * 1e3 for s in sends), default=None)},
        "receive_ms": {**_dist(recv, 50), "max": max(recv, default=None)},
        "inference_pause_ms": {**_dist(pause, 50), "max": max(pause, default=None)},
    }


def link_stats(profiles: dict) -> dict:
    """Bytes/s on each link, from each sender's totals over its own lifetime."""
    rates: dict[str, float] = {}
    for p in profiles.values():
        life = max(p["ended"] - p["started"], 1e-6)
        for key, value in p["counters"].items():
            if key.startswith("bytes_sent:"):
                link = key.split(":", 1)[1]
                rates[link] = rates.get(link, 0.0) + value / life
    learner = profiles.get("learner")
    if learner:
        sends = _spans(learner, "broadcast")
        servers = sum(1 for r in profiles if r.startswith("inference"))
        total = sum(s[4].get("bytes", 0) for s in sends) * servers
        rates["learner->inference (weights)"] = total / max(
            learner["ended"] - learner["started"], 1e-6)
    return dict(sorted(rates.items()))


def cpu_stats(profiles: dict) -> dict:
    """Cores each role's process kept busy over its lifetime, and the total per host
    (a process counted once: --single-process runs every role in one)."""
    roles, hosts, seen = {}, {}, set()
    for role, p in sorted(profiles.items()):
        cores = p.get("cpu_s", 0.0) / max(p["ended"] - p["started"], 1e-6)
        roles[role] = cores
        host = hosts.setdefault(p.get("host", "?"), {"cores_used": 0.0,
                                                      "cpus": p.get("host_cpus")})
        if (p.get("host"), p["pid"]) not in seen:
            seen.add((p.get("host"), p["pid"]))
            host["cores_used"] += cores
    return {"roles": roles, "hosts": hosts}


def build_report(log_dir: Path, warmup_s: float | None = None) -> dict:
    """The merged report of the profiles under ``log_dir`` (see the module docstring)."""
    return report_of(load_profiles(log_dir), warmup_s)


def report_of(profiles: dict, warmup_s: float | None = None) -> dict:
    """The merged report of loaded ``profiles`` (role -> profile)."""
    actors, servers, learner = _by_kind(profiles)
    meta = (learner or next(iter(profiles.values())))["meta"]
    warmup = meta.get("warmup_s", 0.0) if warmup_s is None else warmup_s
    t0, t1 = steady_window(profiles, warmup)
    report = {
        "window_s": t1 - t0, "warmup_s": warmup, "roles": sorted(profiles),
        "settings": meta,
        "actors": actor_stats(actors, t0, t1), "inference": server_stats(servers, t0, t1),
        "learner": learner_stats(learner, t0, t1), "weights": weight_stats(learner, servers),
        "links_bytes_per_s": link_stats(profiles), "cpu": cpu_stats(profiles),
        "dropped_events": sum(p["dropped"] for p in profiles.values()),
    }
    report["bottleneck"] = diagnose(report)
    return report


def chrome_trace(profiles: dict) -> dict:
    """Every role's spans as Chrome trace "complete" events, one process a role, plus
    counters for the servers' queue depth and batch size."""
    origin = min(p["started"] for p in profiles.values())
    events = []
    for pid, (role, p) in enumerate(sorted(profiles.items())):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"name": role}})
        for name, start, dur, tid, args in p["spans"]:
            events.append({"name": name, "cat": role, "ph": "X", "pid": pid, "tid": tid,
                           "ts": round((start - origin) * 1e6, 1),
                           "dur": round(dur * 1e6, 1), "args": args})
        for sample in ("queue_requests", "batch_rows"):
            for t, v in p["samples"].get(sample, []):
                events.append({"name": sample, "ph": "C", "pid": pid, "tid": 0,
                               "ts": round((t - origin) * 1e6, 1), "args": {sample: v}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_report(log_dir: Path, warmup_s: float | None = None) -> tuple[dict, str]:
    """Write ``profile_report.json`` and ``trace.json`` under ``log_dir``; return the
    report and its table."""
    from profiling.table import render

    log_dir = Path(log_dir)
    profiles = load_profiles(log_dir)  # read once: each file holds every span of a role
    report = report_of(profiles, warmup_s)
    (log_dir / "profile_report.json").write_text(json.dumps(report, indent=2))
    (log_dir / "trace.json").write_text(json.dumps(chrome_trace(profiles)))
    return report, render(report)


def main(argv=None) -> int:
    """The command line: merge a profiled run's role profiles, write the report and trace,
    print the table; returns the exit status."""
    p = argparse.ArgumentParser(description="Merge a profiled run's role profiles.")
    p.add_argument("log_dir", type=Path, help="the run's log directory (run.log_dir)")
    p.add_argument("--warmup-s", type=float, default=None, help="override profile.warmup_s")
    args = p.parse_args(argv)
    try:
        _, table = write_report(args.log_dir, args.warmup_s)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nreport: {args.log_dir / 'profile_report.json'}; trace: "
          f"{args.log_dir / 'trace.json'} (chrome://tracing or ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
