"""The start-up memory estimate (models/memory.py): its byte counter against hand values,
the estimate against the measured peak of real learner updates, and the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from configs import load_config
from learner.batch import TrainBatch
from learner.core import Learner
from models import build_policy
from models.memory import (
    LiveBytes, MemoryPlanError, check_fits, check_role, learner_estimate, probe_obs,
    server_estimate,
)
from models.tiny_vla import make_qwen_vl
from tests.conftest import ROOT, launch

MB = 1000 * 1000
BIG_CNN = ["model.cnn.hidden_dim=2048", "model.cnn.image_resolution=128",
           "env.image_size=128", "learner.update_epochs=1"]


def rows(n: int) -> list[str]:
    """One micro-batch of ``n`` chunks per update."""
    return [f"learner.micro_batch_size={n}", f"learner.global_batch_size={n}"]


def test_live_bytes_counts_what_autograd_keeps_and_frees():
    x = torch.randn(1000, 1000, requires_grad=True)  # 4 MB, from before: not counted
    x.grad = torch.zeros_like(x)
    with LiveBytes() as live:
        y = (x @ x).relu()  # mm's 4 MB output dies once relu has its own 4 MB: peak 8
        z = (y * 2).sum()   # y*2 is 4 MB more (y is still alive), the sum 4 bytes
        del y               # relu's output stays: autograd keeps it for backward
        assert live.live == 4 * MB + 4
        assert live.peak == 8 * MB + 4
        z.backward()        # freed by backward: only the 4-byte sum z is left
        assert live.live == 4
        del z
    assert live.live == 0
    assert max(live.trace) == live.peak


def _step_peak(cfg) -> int:
    """Weights, gradients and Adam's state plus the bytes the second of two real updates
    allocates on top (LiveBytes over ``Learner.step``)."""
    policy = build_policy(cfg.model)
    n = cfg.learner.micro_batch_size
    obs = probe_obs(n, cfg.env.image_size, cfg.env.state_dim, cfg.env.wrist_camera)
    learner = Learner(policy, cfg.learner, 1.0, torch.device("cpu"))
    with torch.no_grad():
        out = policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
    batch = TrainBatch(obs, out.actions, out.logprobs, torch.randn(n),
                       torch.ones(n, cfg.model.num_action_chunks, dtype=torch.bool),
                       torch.zeros(n, dtype=torch.long))
    learner.step(batch)  # Adam's state exists from here on
    held = sum(t.numel() * t.element_size() for s in learner.optimizer.state.values()
               for t in s.values() if torch.is_tensor(t))
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    with LiveBytes() as live:
        learner.step(batch)
    estimate = learner_estimate(policy, cfg, on_cuda=False)
    assert estimate.weights == weights and estimate.optimizer == pytest.approx(held, rel=1e-3)
    return weights + held + live.peak, estimate.total


@pytest.mark.parametrize("n", [8, 48])
def test_probes_of_two_and_four_rows_predict_a_real_micro_batch(n):
    """Extrapolated from 2 and 4 rows, op by op, to ``n`` rows: the tensor bytes of a real
    update at ``n`` rows, within 10% (the small probe peaks in backward, the large batch
    at the end of the forward pass)."""
    measured, estimated = _step_peak(load_config(None, BIG_CNN + rows(n)))
    assert estimated == pytest.approx(measured, rel=0.10)


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    return make_qwen_vl(root / "warm", hidden=64), make_qwen_vl(root / "big", hidden=256,
                                                                 layers=4)


def _rss_peak(warm: list[str], measured: list[str]) -> dict:
    """tests/memory_peak.py in its own process. glibc serves every allocation above 64 KiB
    with its own mmap (no dynamic threshold), so freed tensors leave the resident memory and
    its peak is what was allocated at once."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "memory_peak.py"), *warm, "--",
                          *measured], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["cnn", "qwen_oft"])
def test_estimate_is_within_a_quarter_of_the_measured_peak_memory(kind, qwen_dirs):
    """The issue's acceptance: the start-up estimate against the peak resident memory of
    two real updates of a small model on the CPU, within 25%."""
    if kind == "cnn":
        warm, measured = BIG_CNN[1:] + rows(2), BIG_CNN + rows(64)
    else:
        vla = ["model.kind=qwen_oft", "env.image_size=56", "env.wrist_camera=true",
               "learner.update_epochs=1"]
        warm = vla + rows(2) + [f"model.model_path={qwen_dirs[0]}"]
        measured = vla + rows(16) + [f"model.model_path={qwen_dirs[1]}"]
    got = _rss_peak(warm, measured)
    assert got["peak"] > 100 * MB, got  # big enough that the parts, not noise, dominate
    assert got["estimate"] == pytest.approx(got["peak"], rel=0.25), got


def test_bf16_serving_halves_the_weights_and_no_budget_means_no_probe():
    cfg = load_config(None, ["inference.max_batch=4"])
    policy = build_policy(cfg.model)
    full, half = (server_estimate(policy, cfg, dtype) for dtype in (None, torch.bfloat16))
    floats = sum(p.numel() for p in policy.parameters() if p.is_floating_point())
    assert full.weights - half.weights == 2 * floats  # buffers stay fp32, as served
    assert full.optimizer == full.gradients == 0
    assert check_role("learner", policy, cfg, torch.device("cpu")) is None  # nothing to fit


def test_a_sharded_rank_holds_its_share_and_the_layers_it_gathers(qwen_dirs):
    """learner.sharding=fsdp over 4 ranks: a quarter of the weights, gradients, Adam state
    and KL reference per rank, plus two of the largest unit gathered whole (a decoder
    layer or the rest of the policy: more than a layer, less than the whole model)."""
    base = ["model.kind=qwen_oft", f"model.model_path={qwen_dirs[1]}", "env.image_size=56",
            "learner.kl_beta=0.01", *rows(2)]
    cfg = load_config(None, base)
    policy = build_policy(cfg.model)
    whole = learner_estimate(policy, cfg, on_cuda=False)
    shard = learner_estimate(policy, load_config(None, base + [
        "learner.num_ranks=4", "learner.sharding=fsdp"]), on_cuda=False)
    for part in ("weights", "gradients", "optimizer", "reference"):
        assert getattr(shard, part) == getattr(whole, part) // 4, part
    assert whole.gathered == 0 and shard.activations == whole.activations
    layer = max(sum(p.numel() * p.element_size() for p in m.parameters())
                for m in policy.modules() if type(m).__name__ == "Qwen2_5_VLDecoderLayer")
    assert 2 * layer <= shard.gathered < 2 * whole.weights
    assert shard.total < whole.total


def test_a_named_budget_refuses_with_the_numbers_and_the_fix():
    cfg = load_config(None, ["placement.gpu_memory_gib=0.01"])
    estimate = learner_estimate(build_policy(cfg.model), cfg, on_cuda=False)
    assert estimate.total > 0.01 * (1 << 30)
    with pytest.raises(MemoryPlanError, match=r"learner .* MiB = weights .* more than the "
                       r"0\.01 GiB it has \(placement\.gpu_memory_gib=0\.01\); set "
                       r"learner\.micro_batch_size lower"):
        check_fits(estimate, cfg, torch.device("cpu"))
    roomy = load_config(None, ["placement.gpu_memory_gib=1"])
    check_fits(estimate, roomy, torch.device("cpu"))  # fits: no error


def test_launch_stops_at_start_up_when_a_role_cannot_fit(tmp_path):
    """A refusal is a configuration error: the role is not restarted, the run stops."""
    out = launch(tmp_path, "configs/synthetic_grpo.yaml", timeout=120,
                 **{"placement.gpu_memory_gib": 0.001})
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "config error: memory estimate, learner" in text
    assert "placement.gpu_memory_gib=0.001" in text
    assert "a configuration error is not restarted" in text
    assert "update 1/" not in text
