"""Start a chunkrl run: every role on this machine, one role (``--role``), or all roles in
one process (``--single-process``).

    python launch.py --config configs/synthetic_grpo.yaml learner.lr=3e-4
    python launch.py --config CONFIG --role inference --index 0     # one role, this host
    python launch.py --config CONFIG --single-process               # debugging, tests
    python launch.py --config CONFIG --eval model.checkpoint=runs/X/checkpoint.pt
    python launch.py --config CONFIG --profile profile.duration_s=60  # where time goes
    python launch.py --config CONFIG --resume runs/NAME             # continue a run
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROLES = ("learner", "inference", "actor")
log = logging.getLogger("launch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: all defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-4")
    p.add_argument("--role", choices=ROLES, help="start this role only")
    p.add_argument("--index", type=int, default=0, help="index of the actor/server role")
    p.add_argument("--eval", action="store_true",
                   help="evaluate instead of training: every task x trial once (run.mode=eval, "
                        "actor.group_size=1), results under <run.log_dir>/eval")
    p.add_argument("--profile", action="store_true",
                   help="profile the pipeline for profile.duration_s (60) seconds, then print "
                        "the bottleneck; report and Chrome trace in <run.log_dir>")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint (run.log_dir=RUN_DIR): "
                        "versions, optimizer, schedule and TensorBoard steps carry on")
    p.add_argument("--single-process", action="store_true",
                   help="all roles as threads of one process, in-process transport")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    return p.parse_args(argv)


def setup_logging(level: str, log_file: Path | None, tag: str) -> None:
    """The only place logging is configured: terminal plus the role's file."""
    fmt = logging.Formatter(f"%(asctime)s {tag:<12} %(levelname)-7s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level.upper())
    # Models load from local directories only; no progress bars in the role logs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's start-up chatter
    # robosuite warns at every import that it has no private macro file: not our concern.
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, _frame):
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_role(cfg, role: str, index: int) -> int:
    """Run one role in this process until it ends; returns its exit code."""
    if role == "actor":  # actors need no torch: skip its import (many actors, one host)
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.run.torch_threads))
    else:
        import torch

        torch.set_num_threads(cfg.run.torch_threads)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        if role == "learner" and cfg.run.mode == "eval":
            from learner.evaluator import run
            code = run(cfg, stop=stop)
        elif role == "learner":
            from learner.worker import run
            code = run(cfg, stop=stop)
        elif role == "inference":
            from inference_server.server import run
            code = run(cfg, index, stop=stop)
        else:
            from actors.worker import run
            code = run(cfg, index, stop=stop)
    except Exception as exc:
        log.error("%s %d failed: %s: %s", role, index, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        code = 1
    # Leave without running interpreter teardown: a daemon thread may still sit in a
    # torch.distributed call (a peer gone), and tearing it down would abort the process.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_single_process(cfg) -> int:
    """Every role as a thread of this process, over inproc sockets and in-memory weights."""
    import torch
    import zmq

    from actors.worker import run as run_actor
    from inference_server.server import run as run_server
    from learner.evaluator import run as run_evaluator
    from learner.worker import run as run_trainer
    from protocol.weights import InProcWeightBus

    torch.set_num_threads(cfg.run.torch_threads)
    ctx, bus, stop = zmq.Context(), InProcWeightBus(), threading.Event()
    _stop_on_signals(stop)
    failures: list[str] = []

    def guard(name, fn, *args, **kwargs):
        def body():
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                log.error("%s failed: %s", name, exc)
                stop.set()
        return threading.Thread(target=body, name=name, daemon=True)

    run_learner = run_evaluator if cfg.run.mode == "eval" else run_trainer
    threads = [guard("learner", run_learner, cfg, ctx, weights=bus, stop=stop)]
    threads += [guard(f"inference-{i}", run_server, cfg, i, ctx, weights_bus=bus, stop=stop)
                for i in range(cfg.inference.num_servers)]
    threads += [guard(f"actor-{k}", run_actor, cfg, k, ctx, stop=stop)
                for k in range(cfg.actor.num_actors)]
    for t in threads:
        t.start()
    threads[0].join()
    for t in threads[1:]:
        t.join(timeout=cfg.actor.flush_timeout_s + 15)
    stop.set()
    ctx.term()
    return 1 if failures else 0


def _die_with_parent() -> None:
    # Linux: a child gets SIGTERM if the launcher dies, so no role is ever orphaned.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Launcher:
    """Starts every role as a child process and watches them."""

    def __init__(self, cfg, args: argparse.Namespace, overrides: list[str]):
        self.cfg, self.args, self.overrides = cfg, args, overrides
        self.children: dict[str, subprocess.Popen] = {}
        self.log_dir = Path(cfg.run.log_dir)

    def start(self) -> None:
        roles = [("learner", 0)]
        roles += [("inference", i) for i in range(self.cfg.inference.num_servers)]
        roles += [("actor", k) for k in range(self.cfg.actor.num_actors)]
        for role, index in roles:
            cmd = [sys.executable, str(Path(__file__).resolve())]
            if self.args.config:
                cmd += ["--config", self.args.config]
            cmd += [*self.overrides, "--role", role, "--index", str(index),
                    "--log-level", self.args.log_level]
            self.children[f"{role}-{index}"] = subprocess.Popen(
                cmd, preexec_fn=_die_with_parent)

    def watch(self, interrupted: threading.Event) -> int:
        """Wait for the learner to finish; on any role's death stop all and say why."""
        sampler = MemorySampler(self.log_dir / "memory.csv", self.children)
        learner = self.children["learner-0"]
        while True:
            if interrupted.is_set():
                log.info("interrupted: stopping every role")
                self.stop_all(grace_s=self.cfg.actor.flush_timeout_s + 40)
                return 130
            sampler.maybe_sample()
            for name, proc in self.children.items():
                code = proc.poll()
                if code not in (None, 0):
                    log.error("%s died with exit code %d: %s", name, code, self._last_error(name))
                    self.stop_all(grace_s=10)
                    return 1
            if learner.poll() == 0:
                break
            time.sleep(0.5)
        deadline = time.monotonic() + self.cfg.actor.flush_timeout_s + 15
        for name, proc in self.children.items():
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not exit after the learner finished; killing it", name)
                self.stop_all(grace_s=5)
                return 1
            if code != 0:
                log.error("%s exited with code %d: %s", name, code, self._last_error(name))
                return 1
        log.info("run finished: TensorBoard logs in %s", self.log_dir)
        return 0

    def _last_error(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        lines = path.read_text().splitlines() if path.exists() else []
        errors = [line for line in lines if " ERROR " in line]
        return (errors or lines or ["(no log)"])[-1].strip()

    def stop_all(self, grace_s: float) -> None:
        """SIGTERM every child still running, then SIGKILL what is left after ``grace_s``."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class MemorySampler:
    """Resident memory of every role every 5 s, to ``memory.csv`` (time_s, role, rss_mb)."""

    def __init__(self, path: Path, children: dict, every_s: float = 5.0):
        import psutil

        self.path, self.every_s, self.next = path, every_s, 0.0
        self.start = time.monotonic()
        self.procs = {n: psutil.Process(p.pid) for n, p in children.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(["time_s", "role", "rss_mb"])

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every_s
        rows = []
        for name, proc in self.procs.items():
            try:
                rows.append([f"{now - self.start:.1f}", name,
                             f"{proc.memory_info().rss / 2**20:.1f}"])
            except Exception:  # the process has exited
                continue
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)


def report_profile(cfg, code: int) -> int:
    """After a profiled run: merge the roles' profiles, print the table, keep ``code``."""
    if not cfg.profile.enabled:
        return code
    from profiling.report import write_report

    try:
        _, table = write_report(Path(cfg.run.log_dir))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        log.error("no profile report: %s", exc)
        return code or 1
    print(table, flush=True)
    log.info("profile report %s/profile_report.json, trace %s/trace.json (chrome://tracing "
             "or ui.perfetto.dev)", cfg.run.log_dir, cfg.run.log_dir)
    return code


def check_env(cfg) -> None:
    """Unknown suite/task names and a missing model fail here, before any role starts;
    for simulators, the GL backend is chosen once and inherited by every child."""
    from envs import check_env_config, prepare_rendering

    check_env_config(cfg.env)
    if cfg.model.model_path and not Path(cfg.model.model_path).exists():
        raise ValueError(f"model.model_path {cfg.model.model_path!r} does not exist; give a "
                         "local checkpoint directory (nothing is downloaded)")
    try:
        backend = prepare_rendering(cfg.env)
    except RuntimeError as exc:  # envs.render.RenderError
        raise ValueError(str(exc)) from exc
    if backend != "none":
        log.info("rendering: MUJOCO_GL=%s%s", backend,
                 ", fast (no multisampling, shadows, reflections)" if cfg.env.fast_render
                 else "")


def main(argv=None) -> int:
    args = parse_args(argv)
    from configs import ConfigError, load_config

    overrides = list(args.overrides)
    if args.single_process:
        overrides.append("network.transport=inproc")
    if args.eval:
        overrides += ["run.mode=eval", "actor.group_size=1"]
    if args.profile:
        overrides.insert(0, "profile.enabled=true")  # before the user's profile.* keys
    if args.resume:  # resolved once here; the children get the overrides
        from learner.checkpoint import CheckpointError, read_meta
        try:
            meta = read_meta(Path(args.resume))
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # A new incarnation: the resumed actors' episode ids cannot repeat earlier ones.
        overrides += [f"run.log_dir={args.resume}", "run.resume=true",
                      f"run.incarnation={meta['incarnation'] + 1}"]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.eval:  # results beside the training run's, not over them
        overrides.append(f"run.log_dir={Path(cfg.run.log_dir) / 'eval'}")
        cfg = load_config(args.config, overrides)
    if not cfg.run.run_id:
        # Roles started one by one (one per host) must agree without talking: they use the
        # run name. A whole run started here gets a fresh id, handed to its children.
        run_id = cfg.run.name if args.role else \
            time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        overrides.append(f"run.run_id={run_id}")
        cfg = load_config(args.config, overrides)
    if cfg.network.transport == "inproc" and not args.single_process:
        print("config error: network.transport=inproc needs --single-process", file=sys.stderr)
        return 2
    log_dir = Path(cfg.run.log_dir)
    if args.role:
        setup_logging(args.log_level, log_dir / f"{args.role}-{args.index}.log",
                      f"{args.role}-{args.index}")
    else:
        setup_logging(args.log_level, log_dir / "launch.log", "launch")
    if args.role:  # the actor checks its env itself when it builds it
        return run_role(cfg, args.role, args.index)
    try:
        check_env(cfg)
    except ValueError as exc:
        log.error("config error: %s", exc)
        return 2
    log.info("run %s: config %s, logs in %s", cfg.run.run_id, args.config or "(defaults)",
             log_dir)
    if cfg.profile.enabled:  # a report merges every file there: none from an older run
        shutil.rmtree(log_dir / "profile", ignore_errors=True)
    if args.single_process:
        return report_profile(cfg, run_single_process(cfg))
    launcher = Launcher(cfg, args, overrides)
    interrupted = threading.Event()
    _stop_on_signals(interrupted)  # Ctrl-C reaches the children too; SIGTERM is passed on
    try:
        launcher.start()
        return report_profile(cfg, launcher.watch(interrupted))
    finally:
        launcher.stop_all(grace_s=5)
        if cfg.network.transport == "ipc":
            from protocol.wiring import ipc_folder
            shutil.rmtree(ipc_folder(cfg), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
