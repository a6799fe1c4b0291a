"""A real Slurm cluster on this host, for tests: munged, slurmctld and three slurmd.

Three nodes because Slurm's backfill scheduler (the only one that starts heterogeneous
jobs) places each component of one on a node of its own; the three slurmd daemons share
this host, each with its own port, spool and log (Slurm's multiple-slurmd mode). Each node
declares one GPU backed by an empty file: the scheduler honours the recipe's GPU requests
unchanged, and the roles run on the CPU. Everything lives in a temporary folder; the
daemons are stopped by their pid files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "squeue", "sinfo")
NODES = ("n1", "n2", "n3")


def why_not() -> str:
    """Why a cluster cannot start here ('' when it can)."""
    if os.geteuid() != 0:
        return "the Slurm daemons run as root here, and this is not root"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                "scripts/install_system_deps.sh installs it")
    return ""


class SlurmCluster:
    """``start()`` writes the config under ``root`` and starts the daemons; ``env`` has
    ``SLURM_CONF`` for the client commands; ``stop()`` cancels every job and stops them."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]

    def _write_config(self) -> None:
        r = self.root
        (r / "state").mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(2 + len(NODES))]
        gres = []
        for k, node in enumerate(NODES):
            (r / f"gpu{k}").touch()
            gres.append(f"NodeName={node} Name=gpu File={r / f'gpu{k}'}")
        (r / "gres.conf").write_text("\n".join(gres) + "\n")
        nodes = ",".join(NODES)
        # Each node as a recipe's component asks for: 8 CPUs, 64 GB, one GPU.
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={ports[2 + k]} "
            "CPUs=8 RealMemory=65536 Gres=gpu:1" for k, n in enumerate(NODES))
        self.conf.write_text(f"""\
ClusterName=chunkrl-test
SlurmctldHost={self.host}
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
AuthInfo=socket={r / 'munge.socket'},cred_expire=10
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1
SlurmUser=root
SlurmdUser=root
SlurmdParameters=config_overrides
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool-%n'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd-%n.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd-%n.log'}
GresTypes=gpu
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=30
{node_lines}
PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP
""")

    def _run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)

    def start(self) -> None:
        """Write the config, start the daemons, wait until the three nodes are idle."""
        self._write_config()
        r = self.root
        self._run("munged", "--force", f"--socket={r / 'munge.socket'}",
                  f"--pid-file={r / 'munged.pid'}", f"--seed-file={r / 'munge.seed'}",
                  f"--log-file={r / 'munged.log'}")
        self._run("slurmctld", "-f", str(self.conf))
        for node in NODES:
            self._run("slurmd", "-f", str(self.conf), "-N", node)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
            if len(states) == len(NODES) and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm nodes did not come up: {self.logs()}")

    def logs(self) -> str:
        """The tails of the daemons' logs, for a failure's message."""
        out = []
        for log in sorted(self.root.glob("*.log")):
            out.append(f"== {log.name}\n" + "\n".join(log.read_text().splitlines()[-8:]))
        return "\n".join(out)

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> int:
        """Submit; the job id."""
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                             capture_output=True, text=True, timeout=30, cwd=cwd)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        return int(out.stdout.strip().split(";")[0])

    def states(self, job: int) -> list[str]:
        """The states of the job's components in the queue ([] once it has left it)."""
        out = self._run("squeue", "-h", "-j", str(job), "-o", "%T")
        return out.stdout.split() if out.returncode == 0 else []

    def release(self, job: int, timeout_s: float = 120) -> None:
        """Make a requeued ``job`` eligible now: Slurm holds one for about a minute (its
        credential's lifetime) once its steps have stopped. Waits until every component
        is pending again, then sets each one's start time to now."""
        deadline, pending = time.monotonic() + timeout_s, False
        while True:
            out = self._run("squeue", "-h", "-j", str(job), "-o", "%i %T %r").stdout.split("\n")
            rows = [line.split() for line in out if line.strip()]
            if rows and all(r[1] == "PENDING" for r in rows):
                pending = True
                if all(r[2] != "BeginTime" for r in rows):
                    return
                for r in rows:
                    self._run("scontrol", "update", f"JobId={r[0]}", "StartTime=now")
            elif pending:  # released: running again (or already done)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"requeued job {job} not released: {rows}")
            time.sleep(0.5)

    def wait_gone(self, job: int, timeout_s: float) -> None:
        """Until ``job`` has left the queue (finished, failed or cancelled)."""
        deadline = time.monotonic() + timeout_s
        while self.states(job):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {self.states(job)} after {timeout_s:.0f}s")
            time.sleep(1)

    def stop(self) -> None:
        """Cancel every job and wait for them to stop (their steps' processes go with
        them), then stop the daemons (by their pid files)."""
        try:
            self._run("scancel", "-u", "root")
            deadline = time.monotonic() + 60
            while self._run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        pids = [self.root / f"slurmd-{n}.pid" for n in NODES] + \
            [self.root / "slurmctld.pid", self.root / "munged.pid"]
        for path in pids:
            try:
                os.kill(int(path.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass
        deadline = time.monotonic() + 15
        for path in pids:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
