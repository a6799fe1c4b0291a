"""Shared fixtures: small configs with their own log and ipc folders."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs import load_config  # noqa: E402

# MuJoCo fixes its GL platform when first imported, and some tests import robosuite
# directly: choose the backend (egl, else osmesa) before any of them runs. (The vLLM
# environment has no simulators.)
if importlib.util.find_spec("mujoco") is not None:
    from envs.render import select_gl_backend

    select_gl_backend("auto")


def fit(loss_fn, params, steps: int, lr: float) -> list[float]:
    """``steps`` Adam steps on ``loss_fn()``; the loss before each step."""
    import torch

    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def vl_obs(b: int = 3, seed: int = 0):
    """A batch for the tiny Qwen2.5-VL policies: 56x56 main and wrist images (4 tokens each
    at max_pixels 56*56), zero states, instructions of different lengths."""
    import numpy as np

    from envs.base import EnvObs

    rng = np.random.default_rng(seed)
    texts = ["pick up the black bowl", "open the drawer", "put the bowl on the plate"]
    return EnvObs(rng.integers(0, 256, (b, 56, 56, 3), dtype=np.uint8),
                  np.zeros((b, 8), np.float32), (texts * b)[:b],
                  wrist_images=rng.integers(0, 256, (b, 56, 56, 3), dtype=np.uint8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_overrides(tmp_path: Path, **extra) -> list[str]:
    """Overrides for a tiny, fast run isolated in ``tmp_path``."""
    items = {
        "run.log_dir": str(tmp_path / "run"), "run.run_id": uuid.uuid4().hex[:8],
        "run.total_updates": 3, "run.progress_every_s": 0, "network.ipc_dir": str(tmp_path / "ipc"),
        "network.base_port": free_port(), "env.image_size": 32,
        "env.max_episode_steps": 16, "env.synthetic.progress_reward": 2.0,
        "model.cnn.image_resolution": 32, "model.cnn.hidden_dim": 32,
        "actor.num_actors": 2, "actor.envs_per_actor": 8, "actor.pipeline_stages": 2,
        "actor.group_size": 4, "actor.flush_timeout_s": 30, "learner.groups_per_update": 2,
        "learner.max_ready_groups": 4, "inference.max_wait_ms": 2,
        "learner.stall_report_s": 60,  # a run's wind-down waits up to flush_timeout_s + 10
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def launch(tmp_path: Path, config: str, *args: str, timeout: float = 240,
           **overrides) -> subprocess.CompletedProcess:
    """``launch.py --config <config>`` with the small overrides plus ``overrides``, run to
    the end; ``config`` is relative to the repository."""
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / config),
           *small_overrides(tmp_path, **overrides), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def small_cfg(tmp_path):
    """A validated tiny config (two actors of 8 envs, groups of 4, 32x32 images)."""
    return load_config(ROOT / "configs" / "synthetic_grpo.yaml", small_overrides(tmp_path))


def start_run(tmp_path: Path, overrides: list[str],
              config: str = "configs/synthetic_grpo.yaml") -> subprocess.Popen:
    """``launch.py`` in the background with ``overrides``; its terminal output goes to
    ``tmp_path/output.txt``."""
    with open(tmp_path / "output.txt", "w") as output:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config",
                                 str(ROOT / config), *overrides],
                                stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until ``text`` appears in the file ``path``; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.2)


def kill_role(run_dir: Path, name: str) -> list:
    """SIGKILL the live process of ``name`` (from the supervisor's pids.json)."""
    for _ in range(50):
        pid = json.loads((run_dir / "pids.json").read_text()).get(name)
        try:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return [name]
        except ProcessLookupError:  # it died just now; pids.json is being rewritten
            pass
        time.sleep(0.2)  # still restarting
    return []
