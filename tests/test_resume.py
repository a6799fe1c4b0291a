"""Checkpoints and resume: the atomic checkpoint round trip, clear errors for a missing
or corrupt one, and a run whose learner is SIGKILLed mid-run, then resumed."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import load_config
from learner import checkpoint
from learner.batch import build_batch
from learner.core import Learner
from learner.worker import Books
from models import build_policy, load_checkpoint
from protocol.idset import IdSet
from tests.conftest import ROOT, launch, small_overrides
from tests.test_learner import _collect


def _learner(cfg, seed=0):
    torch.manual_seed(seed)
    policy = build_policy(cfg.model)
    return Learner(policy, cfg.learner, 1.0, torch.device("cpu"), seed=1, total_updates=10)


def test_round_trip_restores_everything_and_the_next_update_is_identical(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **{"learner.lr_schedule": "cosine", "learner.lr_warmup_steps": 2}))
    a = _learner(cfg)
    batch = build_batch(_collect(cfg, a.policy))
    a.step(batch)
    received = IdSet.from_ranges([[0, 5], [1 << 32, (1 << 32) + 3]])
    books = Books(received, IdSet.from_ranges([[0, 4]]), {"stale_dropped": 7})
    checkpoint.save(tmp_path, a, 2, books.counters(), books.received, books.trained, {})
    # numpy's and Python's global RNGs continue from the save, not from where they got to.
    after_save = (np.random.rand(3).tolist(), random.random(), torch.rand(2).tolist())
    assert checkpoint.read_meta(tmp_path) == {"version": 1, "incarnation": 2}
    b = _learner(cfg, seed=5)  # other initial weights and RNG
    state = checkpoint.restore(tmp_path, b)
    assert (state.version, state.incarnation, b.version) == (1, 2, 1)
    assert (np.random.rand(3).tolist(), random.random(), torch.rand(2).tolist()) == after_save
    assert state.received == received.ranges() and state.counters["stale_dropped"] == 7
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]
    for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()):
        assert torch.equal(x, y)
    ma, mb = a.step(batch), b.step(batch)  # same Adam moments, same shuffling RNG
    assert ma["train/actor/policy_loss"] == mb["train/actor/policy_loss"]
    for x, y in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(x, y)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary files were renamed


def test_missing_or_corrupt_checkpoints_name_the_file(tmp_path, small_cfg):
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "checkpoint.json")):
        checkpoint.read_meta(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.json is corrupt"):
        checkpoint.read_meta(tmp_path)
    learner = _learner(small_cfg)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.pt does not exist"):
        checkpoint.restore(tmp_path, learner)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "checkpoint.pt")):
        checkpoint.restore(tmp_path, learner)
    # From the command line: one line naming the file, exit code 2.
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config",
                             str(ROOT / "configs/synthetic_grpo.yaml"), "--resume",
                             str(tmp_path / "nothing-here")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert str(tmp_path / "nothing-here" / "checkpoint.json") in result.stderr


def _wait_for_checkpoint(run, min_version, proc, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it was killed"
        try:
            if checkpoint.read_meta(run)["version"] >= min_version:
                return
        except checkpoint.CheckpointError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of version {min_version} within {timeout} s")


def _learner_process(tmp_path):
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "learner" in cmd and "--worker" in cmd and any(str(tmp_path) in c for c in cmd):
            return proc
    raise AssertionError("no learner process found")


def _scalar_steps(run, tag):
    events = EventAccumulator(str(run))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.slow
def test_resume_after_the_learner_is_sigkilled(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config",
           str(ROOT / "configs/synthetic_grpo.yaml"),
           *small_overrides(tmp_path, **{"run.total_updates": 1000,
                                         # by time alone: about one a second
                                         "learner.checkpoint_every": 0,
                                         "learner.checkpoint_every_s": 1.0,
                                         "run.max_restarts": 0})]  # no automatic restart
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=ROOT)
    try:
        _wait_for_checkpoint(run, 6, first)
        time.sleep(1.0)  # mid-run: a few updates past the checkpoint, likely
        _learner_process(tmp_path).send_signal(signal.SIGKILL)
        out, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "learner-0 died (killed by SIGKILL)" in out, out[-2000:]
    assert "restarted 0 times (run.max_restarts=0)" in out
    before = torch.load(run / "checkpoint.pt", weights_only=True)
    v0 = before["version"]
    trained_before = IdSet.from_ranges(before["trained"])
    received_before = IdSet.from_ranges(before["received"])

    result = launch(tmp_path, "configs/synthetic_grpo.yaml", "--resume", str(run),
                    timeout=240, **{"run.total_updates": v0 + 6})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == v0 + 6 and summary["trained_twice"] == 0
    assert f"resumed from {run / 'checkpoint.pt'} at version {v0}" in result.stdout
    # The inference servers started from the resumed weights.
    assert f"weights version {v0}" in (run / "inference-0.log").read_text()
    # Episodes: everything trained before is still on the books; everything new comes
    # from run incarnation 1 (the top 8 of the id's 16 incarnation bits), so no episode
    # from before the restart can be trained again.
    trained = IdSet.from_ranges(summary["trained_episode_id_ranges"])
    assert all(i in trained for i in trained_before)
    new = [i for i in trained if i not in trained_before]
    assert new and all(i >> 56 == 1 and i not in received_before for i in new)
    assert checkpoint.read_meta(run)["incarnation"] == 1
    # TensorBoard continues at the right step: each update once, the killed run's updates
    # after its checkpoint purged.
    assert _scalar_steps(run, "train/actor/policy_loss") == list(range(1, v0 + 7))


@pytest.mark.slow
def test_a_killed_learner_is_restarted_from_its_checkpoint_and_the_run_goes_on(tmp_path):
    """The supervisor restarts a SIGKILLed learner with run.resume=true; the servers and
    actors wait for it (bounded), the servers rejoin with its weights, and the run ends
    at its update count with every update logged once."""
    run, total = tmp_path / "run", 30
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config",
           str(ROOT / "configs/synthetic_grpo.yaml"),
           *small_overrides(tmp_path, **{"run.total_updates": total,
                                         "learner.checkpoint_every": 3,
                                         "learner.keep_checkpoints": True,
                                         "learner.update_sleep_s": 0.2})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    try:
        _wait_for_checkpoint(run, 6, proc)
        _learner_process(tmp_path).send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "learner-0 died (killed by SIGKILL)" in out and "starting learner-0 again" in out
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == total and summary["trained_twice"] == 0
    assert "resumed from" in (run / "learner-0.log").read_text()
    assert "the learner is back" in (run / "inference-0.log").read_text()
    server = json.loads((run / "inference-0.json").read_text())
    assert server["policy_version"] == total
    assert _scalar_steps(run, "train/actor/policy_loss") == list(range(1, total + 1))
    # learner.keep_checkpoints: every third version kept (the restarted learner's too),
    # each loadable as model.checkpoint and holding that version's weights.
    kept = sorted(p.name for p in (run / checkpoint.KEPT).iterdir())
    assert kept == [f"update-{v:06d}.pt" for v in range(3, total + 1, 3)]
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(tmp_path))
    first, last = build_policy(cfg.model), build_policy(cfg.model)
    load_checkpoint(first, str(run / checkpoint.KEPT / kept[0]))
    load_checkpoint(last, str(run / checkpoint.KEPT / kept[-1]))
    assert torch.load(run / checkpoint.KEPT / kept[0], weights_only=True)["version"] == 3
    final = torch.load(run / checkpoint.CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(v, final[k]) for k, v in last.state_dict().items())
    assert not all(torch.equal(v, final[k]) for k, v in first.state_dict().items())
