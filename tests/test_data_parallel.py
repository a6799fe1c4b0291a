"""A data-parallel learner update over two real gloo ranks equals the one-rank update."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from configs import load_config
from learner.batch import build_batch
from learner.core import Learner
from learner.data_parallel import DataParallel
from models import build_policy
from tests.conftest import ROOT, small_overrides
from tests.test_learner import _collect

CONFIG = ROOT / "configs" / "synthetic_grpo.yaml"
UPDATES = 2


def _learner(overrides, dp=None):
    cfg = load_config(CONFIG, overrides)
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    return policy, Learner(policy, cfg.learner, 1.0, torch.device("cpu"), seed=3, dp=dp)


def _rank(rank: int, world: int, store_path: str, overrides, batch_path: str, out: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank,
                            world_size=world)
    policy, learner = _learner(overrides, DataParallel(None, rank, world))
    batch = torch.load(batch_path, weights_only=False)
    metrics = [learner.step(batch) for _ in range(UPDATES)]
    if rank == 0:
        torch.save({"params": [p.detach() for p in policy.parameters()],
                    "metrics": metrics}, out)
    dist.barrier()  # both ranks done before either leaves
    # No interpreter teardown: gloo's threads can abort it ("terminate called without an
    # active exception", seen once in four runs); launch.py's roles leave the same way.
    os._exit(0)


@pytest.mark.parametrize("extra", [
    {},  # one optimizer step per update, micro-batches of 3
    {"learner.update_epochs": 2, "learner.global_batch_size": 10},  # several steps, shuffled
])
def test_two_gloo_ranks_make_the_one_rank_update(tmp_path, extra):
    overrides = small_overrides(tmp_path, **{"learner.micro_batch_size": 3, **extra})
    policy, single = _learner(overrides)
    before = [p.detach().clone() for p in policy.parameters()]
    batch = build_batch(_collect(load_config(CONFIG, overrides), copy.deepcopy(policy),
                                 groups=4))
    assert len(batch) > 3 * 3  # several micro-batches for each rank
    torch.save(batch, tmp_path / "batch.pt")
    want = [single.step(batch) for _ in range(UPDATES)]

    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), overrides,
                                    str(tmp_path / "batch.pt"), str(tmp_path / "rank0.pt")),
                       nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(policy.parameters(), before))
    assert moved > 1e-3  # the updates moved the weights (Adam: about lr a step)
    # Within 1% of the largest move, not float epsilon: a parameter whose gradient is zero
    # in exact arithmetic (the keys' bias before a softmax over positions) gets Adam steps
    # of pure rounding noise, which the order of the ranks' additions changes. A rank's
    # lost or doubled micro-batch moves every parameter by a good share of its step.
    for a, b in zip(got["params"], policy.parameters()):
        torch.testing.assert_close(a, b.detach(), atol=0.01 * moved, rtol=0)
    for mine, theirs in zip(got["metrics"], want):
        assert set(mine) == set(theirs)
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_run_with_two_learner_ranks_trains_every_update_on_both(tmp_path, transport):
    import json

    from tests.conftest import launch

    proc = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "learner.num_ranks": 2, "run.total_updates": 3, "network.transport": transport})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == 3 and summary["trained_twice"] == 0
    assert "data-parallel learner: rank 0 of 2" in (run / "learner-0.log").read_text()
    assert "learner rank 1: 3 updates, now at version 3" in (run / "learner-1.log").read_text()
