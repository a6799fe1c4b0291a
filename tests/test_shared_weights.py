"""The weights' payload through shared memory (links/shared_weights.py): on the CPU the
same code as CUDA IPC, with /dev/shm files instead of IPC handles
(``network.weights_shared: same_host``), over a real gloo group and through launch.py."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from links import shared_weights
from links.weights import synced_layout
from models import build_policy
from tests.conftest import kill_role, small_overrides, start_run, wait_for_text
from tests.test_weights import CPU, _admit, _join, _models, _pair

SHM = Path("/dev/shm")


def _leftovers() -> set:
    return set(SHM.glob("chunkrl-weights-*"))


@pytest.fixture
def shared_cfg(small_cfg):
    return dataclasses.replace(small_cfg, network=dataclasses.replace(
        small_cfg.network, weights_shared="same_host"))


def test_updates_go_through_shared_memory_and_arrive_whole(shared_cfg):
    before = _leftovers()
    learner_model, server_model = _models(shared_cfg)
    hub, _, receiver = _pair(shared_cfg, server_model, learner_model)
    version, state = receiver.wait_first(30)
    assert version == 0
    assert hub.links[0][1].shared is not None and receiver.link.shared is not None
    assert _leftovers() == before  # mapped by both, the files are already unlinked
    for key, value in learner_model.state_dict().items():
        assert torch.equal(state[key], value), key
    for version in (1, 2, 3):  # each update waits for the server's copy: none is torn
        with torch.no_grad():
            for p in learner_model.parameters():
                p.add_(1.0)
        hub.send(version, learner_model)
        deadline = time.monotonic() + 30
        while (got := receiver.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got is not None and got[0] == version
        for key, value in learner_model.state_dict().items():
            assert torch.equal(got[1][key], value), (version, key)
    hub.close()
    assert receiver.finished.wait(30) and receiver.error is None


def test_a_restarted_server_maps_new_buffers(shared_cfg):
    torch.manual_seed(1)
    learner_model = build_policy(shared_cfg.model)
    hub, registry, first = _pair(shared_cfg, build_policy(shared_cfg.model), learner_model)
    assert first.wait_first(30)[0] == 0
    old = hub.links[0][1].shared
    with torch.no_grad():
        learner_model.log_std.add_(0.5)
    second = _join(shared_cfg, registry, build_policy(shared_cfg.model), incarnation=1)
    _admit(hub, 1, learner_model, 2)
    version, state = second.wait_first(30)
    assert version == 1 and hub.links[0][1].shared is not old and old.buffers == []
    assert torch.equal(state["log_std"], learner_model.state_dict()["log_std"])
    hub.close()
    assert second.finished.wait(30) and second.error is None


@pytest.mark.parametrize("mode,mine,theirs,expect", [
    ("auto", ("GPU-a", "host1"), ("GPU-a", "host1"), True),   # one GPU: CUDA IPC
    ("auto", ("GPU-a", "host1"), ("GPU-b", "host1"), False),  # two GPUs: NCCL's job
    ("auto", ("cpu", "host1"), ("cpu", "host1"), False),      # CPU: the group, unless same_host
    ("same_host", ("cpu", "host1"), ("cpu", "host1"), True),
    ("same_host", ("cpu", "host1"), ("cpu", "host2"), False),        # two hosts: no shared memory
    ("never", ("GPU-a", "host1"), ("GPU-a", "host1"), False),
])
def test_both_ends_agree_whether_the_payload_is_shared(small_cfg, monkeypatch, mode, mine,
                                                       theirs, expect):
    cfg = dataclasses.replace(small_cfg, network=dataclasses.replace(
        small_cfg.network, weights_shared=mode))
    hosts = {0: mine[1], 1: theirs[1]}
    rank_of = threading.local()
    monkeypatch.setattr(shared_weights, "_host_identity", lambda: hosts[rank_of.rank])
    store, got = dist.HashStore(), {}

    def end(rank, device):
        rank_of.rank = rank
        got[rank] = shared_weights.wants_shared(store, rank, cfg, device)

    threads = [threading.Thread(target=end, args=(r, d[0]))
               for r, d in ((0, mine), (1, theirs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert got[0] == got[1] == expect


def test_a_server_that_cannot_map_the_buffers_takes_the_group(small_cfg, monkeypatch):
    """A server that cannot map the learner's files (another container's /dev/shm) answers
    0: both ends then use the group, and no file is left behind."""
    def cannot(*args):
        raise FileNotFoundError("no such file in this /dev/shm")

    monkeypatch.setattr(shared_weights.SharedBuffers, "attach", cannot)
    layout = synced_layout(build_policy(small_cfg.model))
    store, got = dist.HashStore(), {}
    before = _leftovers()
    t = threading.Thread(target=lambda: got.update(
        server=shared_weights.accept(store, layout, CPU)))
    t.start()
    got["learner"] = shared_weights.offer(store, layout, CPU)
    t.join(timeout=10)
    assert got == {"server": None, "learner": None}
    assert store.get("shared/attached") == b"0" and _leftovers() == before


def test_launch_with_shared_weights_survives_a_killed_server(tmp_path):
    """A real run with every update through /dev/shm: the server is SIGKILLed mid-run,
    the learner drops it (its acknowledgement fails), the restarted server maps new
    buffers and serves the current weights; no file is left in /dev/shm."""
    before = _leftovers()
    overrides = small_overrides(tmp_path, **{
        "network.weights_shared": "same_host", "run.total_updates": 100000,
        "run.max_duration_s": 40, "run.restart_backoff_s": 0.5,
        "network.heartbeat_s": 0.5, "network.heartbeat_timeout_s": 5,
        "actor.request_retry_s": 3})
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, overrides)
    try:
        wait_for_text(run_dir / "learner-0.log", "update 3/", proc, 120)
        assert kill_role(run_dir, "inference-0") == ["inference-0"]
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "output.txt").read_text()
    learner_log = (run_dir / "learner-0.log").read_text()
    stalls = run_dir / "stalls-learner.txt"  # the learner's stacks, if its loop stuck
    stacks = stalls.read_text()[-6000:] if stalls.exists() else ""
    assert proc.returncode == 0, out[-3000:] + stacks
    assert learner_log.count("payload through shared memory") == 2, stacks  # start, restart
    summary = json.loads((run_dir / "learner_summary.json").read_text())
    server = json.loads((run_dir / "inference-0.json").read_text())
    assert server["policy_version"] == summary["updates"] and server["requests"] > 0
    assert summary["trained_twice"] == 0
    assert _leftovers() == before
