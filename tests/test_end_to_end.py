"""Every role as a real process, started by launch.py, for a few updates."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, launch, small_overrides

pytestmark = pytest.mark.slow


def _launch(tmp_path, *extra_args, timeout=240, **overrides):
    return launch(tmp_path, "configs/synthetic_grpo.yaml", *extra_args, timeout=timeout,
                  **overrides)


def _no_process_of(run_dir: Path) -> bool:
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(run_dir) in part for part in (proc.info["cmdline"] or [])):
            return False
    return True


def _ids(ranges) -> list:
    return [i for start, end in ranges for i in range(start, end)]


def _check_exactly_once(run: Path, num_actors: int) -> dict:
    summary = json.loads((run / "learner_summary.json").read_text())
    received = _ids(summary["episode_id_ranges"])
    assert len(received) == summary["episodes_received"], "an episode was counted twice"
    delivered = []
    for k in range(num_actors):
        actor = json.loads((run / f"actor-{k}.json").read_text())
        assert actor["unacknowledged"] == []
        assert summary["actors_done"][str(k)] == actor["episodes_delivered"]
        ids = _ids(actor["episode_id_ranges"])
        assert len(ids) == actor["episodes_delivered"] and all(i >> 32 == k for i in ids)
        # Two pipeline stages: while one steps its chunk, the other's request is out.
        assert actor["chunks_overlapped"] >= 0.9 * actor["chunks_executed"] > 0, actor
        delivered += ids
    assert sorted(delivered) == sorted(received) and received
    return summary


@pytest.mark.parametrize("transport, servers", [("ipc", 1), ("tcp", 2)])
def test_all_roles_train_and_deliver_every_episode_once(tmp_path, transport, servers):
    # A server that registers after the actors is announced to them with the next roster
    # (heartbeat_s, 1 s); the updates are slowed so the run outlasts that and each server
    # is asked.
    result = _launch(tmp_path, **{"network.transport": transport,
                                  "inference.num_servers": servers, "run.total_updates": 4,
                                  "learner.update_sleep_s": 0.5 * (servers - 1)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    summary = _check_exactly_once(run, num_actors=2)
    assert summary["updates"] == 4
    for i in range(servers):
        stats = json.loads((run / f"inference-{i}.json").read_text())
        assert stats["policy_version"] == 4  # the servers got the learner's weights
        assert stats["requests"] > 0 and stats["rejected"] == 0
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("env/success_once", "env/return", "env/episode_len", "env/reward",
                "train/actor/policy_loss", "train/actor/approx_kl", "train/actor/clip_fraction",
                "train/actor/grad_norm", "train/actor/lr", "train/loss", "train/entropy_loss",
                "rollout/advantages_mean", "rollout/rewards", "rollout/policy_lag",
                "perf/env_steps_per_s", "perf/samples_per_s"):
        assert tag in tags, tag
    assert (run / "checkpoint.pt").exists()
    memory = (run / "memory.csv").read_text().splitlines()
    assert memory[0] == "time_s,role,rss_mb" and any("learner-0" in m for m in memory[1:])
    assert "update 4/4" in result.stdout
    assert _no_process_of(tmp_path)
    assert not (tmp_path / "ipc").exists() or not any((tmp_path / "ipc").iterdir())


def test_single_process_mode(tmp_path):
    result = _launch(tmp_path, "--single-process", **{"run.total_updates": 3})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _check_exactly_once(tmp_path / "run", num_actors=2)


def test_a_dying_role_is_named_and_everything_stops(tmp_path):
    result = _launch(tmp_path, timeout=120, **{"model.state_dim": 5})
    assert result.returncode == 1
    assert "actor-0 died (exit code 2)" in result.stdout or \
        "actor-1 died (exit code 2)" in result.stdout, result.stdout[-3000:]
    assert "a configuration error is not restarted" in result.stdout
    assert "model.state_dim" in result.stdout
    assert _no_process_of(tmp_path)


def test_bad_config_fails_at_start(tmp_path):
    result = _launch(tmp_path, timeout=60, **{"learner.lrr": 1})
    assert result.returncode == 2 and "unknown config key 'learner.lrr'" in result.stderr


def test_ctrl_c_stops_every_role(tmp_path):
    args = [sys.executable, str(ROOT / "launch.py"), "--config",
            str(ROOT / "configs/synthetic_grpo.yaml"),
            *small_overrides(tmp_path, **{"run.total_updates": 100000})]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    log = tmp_path / "run" / "learner-0.log"
    deadline = time.monotonic() + 120
    def trained() -> bool:  # a progress line: "update 1/100000 | ..."
        return log.exists() and re.search(r"update \d+/\d+", log.read_text()) is not None

    while time.monotonic() < deadline and not trained():
        time.sleep(0.5)
    assert trained(), "the run did not start training"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), out[-3000:]
    assert _no_process_of(tmp_path), "a role outlived Ctrl-C"
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] >= 1


def test_ppo_trains_with_bootstraps_from_final_observations(tmp_path):
    result = launch(tmp_path, "configs/synthetic_ppo.yaml", timeout=240, **{
        "actor.group_size": 1, "learner.groups_per_update": 8, "learner.max_ready_groups": 8,
        "run.total_updates": 4})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    _check_exactly_once(run, num_actors=2)
    events = EventAccumulator(str(run))
    events.Reload()
    for tag in ("train/critic/value_loss", "train/critic/value_clip_ratio",
                "train/critic/explained_variance", "rollout/returns_mean"):
        assert len(events.Scalars(tag)) == 4, tag
    # The random policy runs out of steps: truncated episodes arrived with their final
    # observation and were bootstrapped.
    assert sum(e.value for e in events.Scalars("rollout/truncated_bootstraps")) > 0
