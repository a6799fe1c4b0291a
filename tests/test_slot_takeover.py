"""A protocol-speaking client takes over actor slot 1 the way a restarted actor does, during
a real tcp run (issue 19's reproduction): it registers a newer incarnation, says hello on
the learner's trajectory socket and sends one whole group, while the supervisor restarts
the actor it retired. The learner must keep training (it used to abort in libzmq within
seconds, and still did once in 28 runs until ROUTERs stopped handing identities over and
sending heartbeats: learner/receiver.py), the impostor's group must be counted once, and
nothing may be trained twice."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from configs import load_config
from links import wiring
from protocol import ids
from protocol.codec import decode, encode
from protocol.messages import ActorHello, Heartbeat, Register, Roster, Trajectory
from tests.conftest import ROOT, small_overrides, start_run, wait_for_text

pytestmark = pytest.mark.slow
INCARNATION = 300  # newer than any the supervisor gives actor 1 in this run
G = 4


def _group(run_id: str, group_counter: int) -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    group_id = ids.encode(INCARNATION, 1, group_counter)
    frames = []
    for k in range(G):
        c, t = 2, 8
        rewards = np.array([0.0, float(k % 2)], np.float32)
        ep = Trajectory(
            episode_id=ids.encode(INCARNATION, 1, group_counter + 1 + k), group_id=group_id,
            group_size=G, init_state_id=7, task_description="move to the red square",
            env_steps=c * t, episode_return=float(rewards.sum()), success_once=bool(k % 2),
            truncated=False, env_error="",
            main_images=rng.integers(0, 255, (c, 32, 32, 3), dtype=np.uint8),
            states=rng.standard_normal((c, 8)).astype(np.float32),
            actions=rng.uniform(-1, 1, (c, t, 7)).astype(np.float32),
            logprobs=np.full((c, t, 7), -1.0, np.float32),
            policy_versions=np.zeros(c, np.int64), rewards=rewards,
            dones=np.array([False, True]), executed=np.full(c, t, np.int32),
            action_rewards=np.zeros((c, t), np.float32), wrist_images=None, values=None,
            final_main_image=None, final_state=None)
        frames.append(encode(ep, "actor-1", run_id, k + 2))
    return frames


def test_a_slot_taken_over_by_a_newer_incarnation_does_not_stop_training(tmp_path):
    overrides = small_overrides(tmp_path, **{
        "network.transport": "tcp", "run.total_updates": 100000, "run.max_duration_s": 45,
        "learner.update_sleep_s": 1.0, "run.max_restarts": 10, "run.restart_backoff_s": 0.5,
        "network.heartbeat_s": 0.5, "network.heartbeat_timeout_s": 5})
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", overrides)
    run_dir = tmp_path / "run"
    proc = start_run(tmp_path, overrides)
    ctx = zmq.Context()
    try:
        wait_for_text(run_dir / "learner-0.log", "update 2/", proc, 120)
        reg = ctx.socket(zmq.DEALER)
        reg.setsockopt(zmq.IDENTITY, f"actor-1-{INCARNATION}".encode())
        reg.setsockopt(zmq.LINGER, 0)
        reg.connect(wiring.rendezvous_address(cfg, bind=False))
        reg.send_multipart(encode(Register("actor", 1, INCARNATION, "", -1), "actor-1",
                                  cfg.run.run_id, 0))
        assert reg.poll(10_000), "no Roster from the rendezvous"
        roster = decode(reg.recv_multipart())[1]
        assert isinstance(roster, Roster)
        learner = ctx.socket(zmq.DEALER)
        # An identity of its own choosing (actors set none): nothing is handed over to it.
        learner.setsockopt(zmq.IDENTITY, b"actor-1")
        learner.setsockopt(zmq.LINGER, 0)
        learner.connect(roster.trajectory_address)
        learner.send_multipart(encode(ActorHello(1, G, G), "actor-1", cfg.run.run_id, 1))
        for frames in _group(cfg.run.run_id, 1000):
            learner.send_multipart(frames)
        deadline = time.monotonic() + 20  # the restarted actor 1 comes and is refused
        while time.monotonic() < deadline:
            reg.send_multipart(encode(Heartbeat("actor", 1, INCARNATION), "actor-1",
                                      cfg.run.run_id, 0))
            while reg.poll(0):
                reg.recv_multipart()
            while learner.poll(0):
                learner.recv_multipart()
            assert proc.poll() is None
            time.sleep(0.5)
        reg.close()
        learner.close()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        ctx.term()
    out = (tmp_path / "output.txt").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert f"actor 1 restarted (incarnation 0 -> {INCARNATION})" in out  # the takeover
    assert "was replaced; exit" in out  # the supervisor's restarts of actor 1, refused
    assert "learner-0 died" not in out and "Assertion failed" not in out, out[-3000:]
    summary = json.loads((run_dir / "learner_summary.json").read_text())
    assert summary["trained_twice"] == 0  # (resends whose ack was lost: acked, not counted)
    assert summary["updates"] >= 10, summary["updates"]
