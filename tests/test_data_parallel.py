"""A data-parallel learner update over two real gloo ranks equals the one-rank update."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from configs import load_config
from learner.batch import build_batch
from learner import checkpoint, data_parallel, sharding
from learner.core import Learner
from learner.data_parallel import DataParallel
from models import build_policy
from protocol.idset import IdSet
from tests.conftest import ROOT, small_overrides
from tests.test_learner import _collect

CONFIG = ROOT / "configs" / "synthetic_grpo.yaml"
UPDATES = 2


def _learner(overrides, dp=None):
    cfg = load_config(CONFIG, overrides)
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    return policy, Learner(policy, cfg.learner, 1.0, torch.device("cpu"), seed=3, dp=dp)


def _rank(rank: int, world: int, store_path: str, overrides, batch_path: str, out: str,
          sharded: bool, resume_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank,
                            world_size=world)
    policy, learner = _learner(overrides, DataParallel(None, rank, world, sharded))
    if resume_dir:  # a one-rank learner's checkpoint, Adam's moments and all
        checkpoint.restore(Path(resume_dir), learner)
    if sharded:
        sharding.shard_learner(learner)
    batch = torch.load(batch_path, weights_only=False)
    metrics = [learner.step(batch) for _ in range(UPDATES)]
    if sharded and rank > 0:  # rank 0's full_state orders the gather this rank joins
        assert data_parallel.receive() == (data_parallel.STATE, None)
    model, optimizer = learner.full_state()
    if rank == 0:
        torch.save({"params": [p.detach() for p in learner.serving.parameters()],
                    "model": model, "optimizer": optimizer, "metrics": metrics}, out)
    dist.barrier()  # both ranks done before either leaves
    # No interpreter teardown: gloo's threads can abort it ("terminate called without an
    # active exception", seen once in four runs); launch.py's roles leave the same way.
    os._exit(0)


SEVERAL_STEPS = {"learner.update_epochs": 2, "learner.global_batch_size": 10}  # shuffled


@pytest.mark.parametrize("extra,sharded,resumed", [
    ({}, False, False),  # one optimizer step per update, micro-batches of 3
    ({}, True, False),   # FSDP2: each rank holds half of every parameter
    ({}, True, True),    # FSDP2 from a one-rank checkpoint (Adam's state carried over)
    (SEVERAL_STEPS, False, False),
    (SEVERAL_STEPS, True, False),
    ("qwen_oft", True, False),  # a transformers VLA: its layers are units of their own
    ("qwen_oft_lora", True, False),  # LoRA: frozen base and trainable adapters in one unit
], ids=["replicate", "fsdp", "fsdp-resumed", "replicate-steps", "fsdp-steps", "fsdp-qwen_oft",
        "fsdp-qwen_oft-lora"])
def test_two_gloo_ranks_make_the_one_rank_update(tmp_path, extra, sharded, resumed):
    if isinstance(extra, str):  # a tiny QwenOFT, made here
        from models.tiny_vla import make_qwen_vl, make_starvla_run

        run = make_starvla_run(tmp_path / "oft", make_qwen_vl(tmp_path / "vl"))
        lora = {"model.lora_rank": 4} if extra.endswith("lora") else {}
        extra = {"model.kind": "qwen_oft", "model.model_path": str(run),
                 "model.use_wrist_image": False, "model.init_log_std": -2.5,
                 "env.image_size": 56, **lora}
    overrides = small_overrides(tmp_path, **{"learner.micro_batch_size": 3, **extra})
    policy, single = _learner(overrides)
    batch = build_batch(_collect(load_config(CONFIG, overrides), copy.deepcopy(policy),
                                 groups=4))
    assert len(batch) > 3 * 3  # several micro-batches for each rank
    torch.save(batch, tmp_path / "batch.pt")
    resume_dir = ""
    if resumed:
        single.step(batch)
        resume_dir = str(tmp_path)
        checkpoint.save(Path(resume_dir), single, 0, {}, IdSet(), IdSet(), {})
    before = [p.detach().clone() for p in policy.parameters()]
    want = [single.step(batch) for _ in range(UPDATES)]

    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), overrides,
                                    str(tmp_path / "batch.pt"), str(tmp_path / "rank0.pt"),
                                    sharded, resume_dir), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(policy.parameters(), before))
    assert moved > 1e-3  # the updates moved the weights (Adam: about lr a step)
    # Within 1% of the largest move, not float epsilon: a parameter whose gradient is zero
    # in exact arithmetic (the keys' bias before a softmax over positions) gets Adam steps
    # of pure rounding noise, which the order of the ranks' additions changes. A rank's
    # lost or doubled micro-batch moves every parameter by a good share of its step.
    for a, b in zip(got["params"], policy.parameters()):
        torch.testing.assert_close(a, b.detach(), atol=0.01 * moved, rtol=0)
    # The checkpoint's layout is one rank's, whichever way the ranks held the model.
    model, optimizer = single.full_state()
    assert got["model"].keys() == model.keys()
    for key, value in model.items():
        torch.testing.assert_close(got["model"][key], value, atol=0.01 * moved, rtol=0)
    # (a checkpoint's round trip stores Adam's betas as a list)
    assert json.dumps(got["optimizer"]["param_groups"]) == \
        json.dumps(optimizer["param_groups"])
    for index, moments in optimizer["state"].items():
        for name, value in moments.items():  # Adam's step count and moments
            torch.testing.assert_close(got["optimizer"]["state"][index][name], value,
                                       atol=1e-3 * float(value.abs().max()) + 1e-8, rtol=0)
    for mine, theirs in zip(got["metrics"], want):
        assert set(mine) == set(theirs)
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_run_with_two_learner_ranks_trains_every_update_on_both(tmp_path, transport):

    from tests.conftest import launch

    proc = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "learner.num_ranks": 2, "run.total_updates": 3, "network.transport": transport})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == 3 and summary["trained_twice"] == 0
    assert "data-parallel learner: rank 0 of 2" in (run / "learner-0.log").read_text()
    assert "learner rank 1: 3 updates, now at version 3" in (run / "learner-1.log").read_text()


@pytest.mark.slow
def test_a_sharded_run_checkpoints_what_one_rank_resumes(tmp_path):
    """learner.sharding=fsdp through launch.py: both ranks train every update, and the
    final checkpoint (gathered from the shards) holds the one-rank layout and resumes a
    one-rank learner, whose servers start from the sharded run's last weights."""
    from tests.conftest import launch

    proc = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "learner.num_ranks": 2, "learner.sharding": "fsdp", "run.total_updates": 3})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    assert "data-parallel learner: rank 0 of 2 (fsdp)" in (run / "learner-0.log").read_text()
    rank1 = (run / "learner-1.log").read_text()
    assert "FSDP2 over 2 ranks" in rank1 and "learner rank 1: 3 updates" in rank1
    # The servers got every update's weights, gathered from the shards.
    assert json.loads((run / "inference-0.json").read_text())["policy_version"] == 3
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["version"] == 3 and len(state["optimizer"]["state"]) > 0
    policy, single = _learner(small_overrides(tmp_path))
    policy.load_state_dict(state["model"])  # the one-rank layout, every key whole
    single.optimizer.load_state_dict(state["optimizer"])

    result = launch(tmp_path, "configs/synthetic_grpo.yaml", "--resume", str(run),
                    **{"run.total_updates": 5})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == 5 and summary["trained_twice"] == 0
    assert "weights version 3" in (run / "inference-0.log").read_text()
