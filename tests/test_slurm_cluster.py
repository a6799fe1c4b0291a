"""scripts/slurm_chunkrl.sbatch, unchanged, on a real Slurm cluster (tests/slurm_cluster.py:
munged, slurmctld and three slurmd on this host): a requeued job and a cancelled then
resubmitted one resume from the checkpoint their SIGTERM wrote and run to their end,
versions continuing and nothing trained twice. Skipped, with the reason, where Slurm
cannot run (not root, not installed)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, free_port
from tests.slurm_cluster import SlurmCluster, why_not

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "scripts/slurm_chunkrl.sbatch"
CONFIG = "configs/synthetic_grpo.yaml"
UPDATES = 20
USED_PORTS: list[int] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _base_port() -> int:
    """A base port whose run's ports (base .. base+9) meet none of an earlier job's: a
    port just given up may still be in TIME_WAIT."""
    while True:
        base = free_port()
        if all(abs(base - used) > 20 for used in USED_PORTS) and base < 65000:
            USED_PORTS.append(base)
            return base


def _submit(cluster: SlurmCluster, run_dir: Path, *overrides: str) -> int:
    """The recipe, unchanged, with a tiny synthetic run (CPU, gloo) in ``run_dir``."""
    tiny = ["env.image_size=32", "model.cnn.image_resolution=32", "model.cnn.hidden_dim=32",
            "env.max_episode_steps=16", "actor.envs_per_actor=8", "actor.group_size=4",
            "learner.groups_per_update=2", "learner.device=cpu", "inference.device=cpu",
            "run.progress_every_s=0", f"network.base_port={_base_port()}",
            f"run.total_updates={UPDATES}"]
    return cluster.sbatch(f"--output={run_dir.parent / 'job-%j.out'}", str(SCRIPT), CONFIG,
                          *tiny, *overrides, cwd=ROOT, env={
                              "ACTORS": "2", "RUN_DIR": str(run_dir), "PYTHON": sys.executable})


def _wait_for(path: Path, text: str, cluster: SlurmCluster, job: int, timeout_s=240) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert cluster.states(job), f"job {job} ended before {text!r}: {cluster.logs()}"
        assert time.monotonic() < deadline, f"no {text!r} in {path}: {cluster.logs()}"
        time.sleep(0.5)


def _versions(run_dir: Path) -> list[int]:
    """The TensorBoard steps of one scalar the learner logs every update (as a reader
    sees them: a resumed run purges what followed its checkpoint)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("train/actor/policy_loss")]


def _check_continued(run_dir: Path, incarnation: int) -> int:
    """The run reached UPDATES through its restart: every version once, none twice;
    returns the version it resumed from."""
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    summary = json.loads((run_dir / "learner_summary.json").read_text())
    assert meta["incarnation"] == incarnation and meta["version"] == UPDATES
    assert summary["updates"] == UPDATES and summary["trained_twice"] == 0
    assert sorted(_versions(run_dir)) == list(range(1, UPDATES + 1))
    log = (run_dir / "learner-0.log").read_text()
    return int(log.split("resumed from ")[1].split(" at version ")[1].split()[0])


def test_a_requeued_job_resumes_from_the_checkpoint_its_sigterm_wrote(cluster, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(cluster, run_dir, "learner.update_sleep_s=0.3")
    _wait_for(run_dir / "learner-0.log", "update 5/", cluster, job)
    assert cluster._run("scontrol", "requeue", str(job)).returncode == 0
    cluster.release(job)  # as an operator may: Slurm would hold it for a minute
    cluster.wait_gone(job, 300)
    resumed = _check_continued(run_dir, incarnation=1)
    assert 5 <= resumed < UPDATES
    out = (tmp_path / f"job-{job}.out").read_text()
    assert "chunkrl: learner on n1" in out and "restart 0)" in out
    assert "restart 1, resuming" in out and "DUE TO JOB REQUEUE" in out
    for role in ("learner-0", "inference-0", "actor-0", "actor-1"):  # each on its node
        assert (run_dir / f"{role}.log").exists(), role


def test_scancel_stops_every_role_with_a_checkpoint_and_a_resubmission_resumes(cluster,
                                                                               tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(cluster, run_dir, "learner.update_sleep_s=0.3")
    _wait_for(run_dir / "learner-0.log", "update 5/", cluster, job)
    assert cluster._run("scancel", str(job)).returncode == 0
    cluster.wait_gone(job, 120)
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    log = (run_dir / "learner-0.log").read_text()
    last_update = int(log.rsplit("update ", 1)[1].split("/")[0])
    assert meta["version"] == last_update >= 5  # saved as it stopped, not an older one
    assert f"checkpoint: version {last_update} in" in log
    out = (tmp_path / f"job-{job}.out").read_text()
    assert out.count("interrupted: stopping every role") == 4  # learner, server, 2 actors
    again = _submit(cluster, run_dir, "learner.update_sleep_s=0.3")
    cluster.wait_gone(again, 300)
    assert _check_continued(run_dir, incarnation=1) == last_update
