"""Starts role processes, watches them, and restarts the ones that die.

One :class:`Supervisor` per host: ``launch.py`` with no ``--role`` supervises every role of
the run on this machine; ``launch.py --role R`` supervises that one role (one per host
in a multi-host run). A child that dies (exit code not 0) is started again after a
backoff (``run.restart_backoff_s``, doubling per quick restart of the same slot, at most
30 s; one that ran 10 s or more starts the backoff over),
at most ``run.max_restarts`` times; each start gets the next ``run.start``, so its
incarnation (and its episode ids) are new. The learner restarts from its checkpoint
(``run.resume=true``) when it has one. A role that gave up on a lost learner
(``EXIT_LEARNER_GONE``), or that met a configuration error (``EXIT_CONFIG_ERROR``), is not
restarted. ``pids.json`` (``pids-ROLE-I.json`` for a one-role supervisor, as hosts may
share the log folder) names every live child's pid.
"""

from __future__ import annotations

import csv
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from links.registration import EXIT_CONFIG_ERROR, EXIT_LEARNER_GONE

log = logging.getLogger("launch")
MAX_BACKOFF_S = 30.0
STEADY_S = 10.0


def _die_with_parent() -> None:
    # Linux: a child gets SIGTERM if its supervisor dies, so no role is ever orphaned.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Slot:
    """One role process and its history."""

    role: str
    index: int
    proc: subprocess.Popen | None = None
    starts: int = 0
    restart_at: float | None = None  # monotonic time of a scheduled restart
    started_at: float = 0.0
    ended: int | None = None  # final exit code once it is not coming back

    @property
    def name(self) -> str:
        """``role-index``, e.g. ``actor-0``: the slot's name in logs and ``pids.json``."""
        return f"{self.role}-{self.index}"


class Supervisor:
    """Runs ``slots`` as children of this process (``command(slot)`` builds each argv,
    ``environ(slot)``, when given, each environment: the placement's GPUs)."""

    def __init__(self, cfg, slots: list[tuple[str, int]], command, log_dir: Path,
                 pids_name: str = "pids.json", environ=None):
        self.cfg, self.command, self.log_dir = cfg, command, log_dir
        self.environ = environ  # slot -> the child's environment (None: this process's)
        self.pids_name = pids_name  # one file per supervisor (hosts may share log_dir)
        self.slots = {f"{r}-{i}": Slot(r, i) for r, i in slots}
        self.restarts = 0

    # --- starting -----------------------------------------------------------------------
    def start_all(self) -> None:
        """Start every slot's process."""
        for slot in self.slots.values():
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        env = self.environ(slot) if self.environ is not None else None
        slot.proc = subprocess.Popen(self.command(slot), env=env, preexec_fn=_die_with_parent)
        slot.starts += 1
        slot.started_at, slot.restart_at = time.monotonic(), None
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {name: s.proc.pid for name, s in self.slots.items()
                if s.proc is not None and s.proc.poll() is None}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.log_dir / f"{self.pids_name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.log_dir / self.pids_name)

    # --- watching -----------------------------------------------------------------------
    def check(self) -> str:
        """Reap and restart; returns "" while running, "failed: why" when a slot is beyond
        its restart limit, "learner finished" when the learner ended well."""
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.restart_at is not None and now >= slot.restart_at:
                log.info("starting %s again (start %d)", slot.name, slot.starts + 1)
                self._start(slot)
            if slot.proc is None or slot.ended is not None or slot.restart_at is not None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            self._write_pids()
            if code == 0:
                slot.ended = 0
                if slot.name == "learner-0":  # the learner proper, not a data-parallel rank
                    return "learner finished"
                continue
            if code == EXIT_LEARNER_GONE:
                log.error("%s gave up waiting for the learner (%s)", slot.name,
                          self.last_error(slot.name))
                slot.ended = code
                continue
            why = f"{slot.name} died ({describe_exit(code)}): {self.last_error(slot.name)}"
            if code == EXIT_CONFIG_ERROR:
                slot.ended = code
                return f"failed: {why}; a configuration error is not restarted"
            if slot.role == "learner" and self.cfg.learner_ranks > 1:
                slot.ended = code
                return (f"failed: {why}; the ranks of a data-parallel learner are not "
                        "restarted (their group cannot re-form mid-run): continue the run "
                        "with launch.py --resume RUN_DIR")
            restarts_done = slot.starts - 1
            if restarts_done >= self.cfg.run.max_restarts:
                slot.ended = code
                return f"failed: {why}; it was restarted {restarts_done} times " \
                       f"(run.max_restarts={self.cfg.run.max_restarts})"
            # A process that ran a while before dying is not crash-looping: the backoff
            # starts over.
            steady = now - slot.started_at > STEADY_S
            backoff = min(self.cfg.run.restart_backoff_s * 2 ** (0 if steady else
                                                                  restarts_done), MAX_BACKOFF_S)
            self.restarts += 1
            log.warning("%s; restart %d/%d in %.1f s", why, restarts_done + 1,
                        self.cfg.run.max_restarts, backoff)
            slot.restart_at = now + backoff
        return ""

    def all_ended(self) -> bool:
        """Whether every slot has ended for good (none is coming back)."""
        return all(s.ended is not None for s in self.slots.values())

    def last_error(self, name: str) -> str:
        """The last ERROR line of ``name``'s log, else its last line (or ``(no log)``)."""
        path = self.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        errors = [line for line in lines if " ERROR " in line]
        return (errors or lines or ["(no log)"])[-1].strip()

    def running(self) -> dict[str, subprocess.Popen]:
        """The children still running, by slot name."""
        return {n: s.proc for n, s in self.slots.items()
                if s.proc is not None and s.proc.poll() is None}

    def wait_all(self, timeout_s: float) -> list[str]:
        """Wait for every child to exit by itself; returns the names that did not, or
        that exited with an error."""
        deadline = time.monotonic() + timeout_s
        bad = []
        for name, slot in self.slots.items():
            if slot.proc is None or slot.restart_at is not None:
                continue
            try:
                code = slot.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not exit after the learner finished", name)
                bad.append(name)
                continue
            if code not in (0, EXIT_LEARNER_GONE) and slot.ended is None:
                log.error("%s exited with %s: %s", name, describe_exit(code),
                          self.last_error(name))
                bad.append(name)
        return bad

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM every child still running, then SIGKILL what is left after ``grace_s``."""
        for slot in self.slots.values():
            slot.restart_at = None
        procs = list(self.running().values())
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class MemorySampler:
    """Resident memory of every role every 5 s, to ``memory.csv`` (time_s, role, rss_mb)."""

    def __init__(self, path: Path, supervisor: Supervisor, every_s: float = 5.0):
        self.path, self.supervisor, self.every_s, self.next = path, supervisor, every_s, 0.0
        self.start = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(["time_s", "role", "rss_mb"])

    def maybe_sample(self) -> None:
        """Append every running child's resident memory, at most once per ``every_s``."""
        import psutil

        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every_s
        rows = []
        for name, proc in self.supervisor.running().items():
            try:
                rss = psutil.Process(proc.pid).memory_info().rss
            except Exception:  # the process has exited
                continue
            rows.append([f"{now - self.start:.1f}", name, f"{rss / 2**20:.1f}"])
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)


def restart_overrides(role: str, starts: int, log_dir: Path,
                      checkpoint_every: int) -> list[str]:
    """The overrides a role's start number ``starts`` adds to its command: a restarted
    learner resumes from the checkpoint in ``log_dir``; without one it starts again at
    version 0, which is logged as a warning (every update so far is lost)."""
    extra = [f"run.start={starts}"]
    if role == "learner" and starts:
        if (log_dir / "checkpoint.json").exists():
            extra.append("run.resume=true")
        else:
            log.warning("the learner restarts from version 0: %s has no checkpoint yet "
                        "(learner.checkpoint_every=%d)", log_dir, checkpoint_every)
    return extra


def python_argv() -> list[str]:
    """This interpreter and launch.py."""
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "launch.py")]
