"""Run in its own process by tests/test_memory.py: the peak resident memory of real learner
updates against the start-up estimate of the same config. Prints one JSON line.

    python tests/memory_peak.py WARMUP_OVERRIDES -- OVERRIDES

The process first runs two updates of a smaller config of the same model kind (so that
the libraries' lazy start-up, kernels and thread pools, is not counted), then resets
Linux's peak-RSS counter (``/proc/self/clear_refs``), builds the measured config's policy
and learner, runs two updates on one micro-batch of random observations, and reports the
peak (``VmHWM``) above the resident memory before the build: weights, gradients, Adam's
state, activations and everything else the process allocated for them.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from configs import load_config  # noqa: E402
from learner.batch import TrainBatch  # noqa: E402
from learner.core import Learner  # noqa: E402
from models import build_policy  # noqa: E402
from models.memory import learner_estimate, probe_obs  # noqa: E402


def status(field: str) -> int:
    """``field`` of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def updates(cfg, reset: bool) -> tuple:
    """Build the policy and learner, run two updates; the policy and the peak RSS above
    the resident memory before the build (with ``reset``: the counter reset there)."""
    rows = cfg.learner.micro_batch_size
    obs = probe_obs(rows, cfg.env.image_size, cfg.env.state_dim, cfg.env.wrist_camera)
    gc.collect()
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    policy = build_policy(cfg.model)
    learner = Learner(policy, cfg.learner, cfg.inference.temperature, torch.device("cpu"))
    with torch.no_grad():
        out = policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
    batch = TrainBatch(obs, out.actions, out.logprobs, torch.randn(rows),
                       torch.ones(rows, cfg.model.num_action_chunks, dtype=torch.bool),
                       torch.zeros(rows, dtype=torch.long))
    del out
    for _ in range(2):
        learner.step(batch)
    return policy, status("VmHWM") - before


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    cut = argv.index("--")
    updates(load_config(None, argv[:cut]), reset=False)
    cfg = load_config(None, argv[cut + 1:])
    policy, peak = updates(cfg, reset=True)
    estimate = learner_estimate(policy, cfg, on_cuda=False)
    print(json.dumps({"estimate": estimate.total, "peak": peak,
                      "describe": estimate.describe()}))


if __name__ == "__main__":
    main(sys.argv[1:])
