"""What the pipeline benchmarks share: whole runs of launch.py in a temporary folder, the
figures they leave behind, and Markdown tables.

A benchmark run is a real run: ``launch.py`` starts the learner, the inference servers
and the actors as processes on this machine, over ipc sockets in the run's own folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "synthetic_grpo.yaml"


def launch_run(overrides: dict, profile: bool = False, timeout_s: float = 600,
               config: Path = BASE_CONFIG) -> Path:
    """Run ``launch.py`` with ``overrides`` in a fresh folder; its log directory."""
    folder = Path(tempfile.mkdtemp(prefix="chunkrl-bench-"))
    items = {"run.log_dir": folder / "run", "run.run_id": uuid.uuid4().hex[:8],
             "network.ipc_dir": folder / "ipc", "run.progress_every_s": 3600,
             "learner.checkpoint": "false", **overrides}
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config", str(config),
           *[f"{k}={v}" for k, v in items.items()], *(["--profile"] if profile else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise RuntimeError(f"benchmark run failed ({' '.join(cmd[3:])}):\n{tail}")
    return folder / "run"


def profiled(overrides: dict, duration_s: float, warmup_s: float) -> dict:
    """The profile report of a ``--profile`` run of ``duration_s`` seconds."""
    run = launch_run({**overrides, "profile.duration_s": duration_s,
                      "profile.warmup_s": warmup_s}, profile=True)
    return json.loads((run / "profile_report.json").read_text())


def actor_rate(run: Path) -> float:
    """Env steps/s the actors of ``run`` made, each over its own acting time."""
    total = 0.0
    for f in sorted(run.glob("actor-*.json")):
        data = json.loads(f.read_text())
        total += data["env_steps"] / max(data["acting_s"], 1e-6)
    return total


def markdown(title: str, rows: list[dict], cols: dict) -> str:
    """A Markdown table of ``rows``; ``cols`` maps headers to keys."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.{3 if abs(v) < 0.1 else 2 if abs(v) < 10 else 1}f}"
        return "" if v is None else str(v)
    lines = [f"\n{title}\n", "| " + " | ".join(cols) + " |",
             "|---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in cols.values()) + " |" for r in rows]
    return "\n".join(lines)


def stamp() -> str:
    """The machine and versions, for the head of a benchmark's output."""
    import platform

    import numpy
    import zmq

    return (f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{__import__('os').cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, pyzmq {zmq.__version__}")


class LearnerStandIn:
    """The learner's real links (rendezvous, weights hub, trajectory socket) without its
    training, for benchmarks that drive inference servers themselves: ``send`` is the
    learner's weight broadcast, ``close`` its end of the run."""

    def __init__(self, cfg, policy, servers: int, timeout_s: float = 120):
        import torch
        import zmq

        from learner.link import LearnerLinks

        self.ctx, self.policy = zmq.Context(), policy
        self.links = LearnerLinks(cfg, self.ctx, "bench-learner", torch.device("cpu"))
        deadline = time.monotonic() + timeout_s
        while len(self.links.weights.links) < servers:  # each joins and gets version 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.links.weights.links)} of {servers} "
                                   "inference servers joined")
            self.links.admit(0, policy)
            time.sleep(0.05)

    def send(self, version: int, policy) -> None:
        self.links.weights.send(version, policy)

    def close(self) -> None:
        self.links.weights.close()
        receiver = self.links.receiver  # no actors to drain: just stop its thread
        receiver.halt.set()
        receiver.join(timeout=5)
        self.links.close()
        self.ctx.destroy(linger=0)
