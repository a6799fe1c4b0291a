"""Start a chunkrl run: every role on this machine, one role (``--role``), or all roles in
one process (``--single-process``). Role processes are supervised: a dead one restarts.

    python launch.py --config configs/synthetic_grpo.yaml learner.lr=3e-4
    python launch.py --config CONFIG --role inference --index 0     # one role, this host
    python launch.py keys DIR                                       # CURVE key pairs
    python launch.py export RUN_DIR OUT       # the trained policy in its original layout
    python launch.py --config CONFIG --single-process               # debugging, tests
    python launch.py --config CONFIG --eval model.checkpoint=runs/X/checkpoint.pt
    python launch.py --config CONFIG --record        # demonstrations (expert) to HDF5
    python launch.py --config CONFIG --sft sft.datasets=[runs/X/dataset]  # behaviour cloning
    python launch.py --config CONFIG --train-world-model world_model.datasets=[runs/X/dataset]
    python launch.py --config CONFIG --profile profile.duration_s=60  # where time goes
    python launch.py --config CONFIG --resume runs/NAME             # continue a run
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

ROLES = ("learner", "inference", "actor")
log = logging.getLogger("launch")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of a run: ``--config``, dotted overrides, role and mode flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: all defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-4")
    p.add_argument("--role", choices=ROLES, help="start (and supervise) this role only")
    p.add_argument("--worker", action="store_true",
                   help=argparse.SUPPRESS)  # run the role in this process (the supervised child)
    p.add_argument("--index", type=int, default=0, help="index of the actor/server role")
    p.add_argument("--eval", action="store_true",
                   help="evaluate instead of training: every task x trial once (run.mode=eval, "
                        "actor.group_size=1), results under <run.log_dir>/eval")
    p.add_argument("--record", action="store_true",
                   help="record demonstrations: every task x episode once, each written with "
                        "every simulator step to <run.log_dir>/dataset (run.mode=record)")
    p.add_argument("--sft", action="store_true",
                   help="behaviour cloning on sft.datasets in this process (run.mode=sft); "
                        "checkpoint.pt and dataset_statistics.json in <run.log_dir>")
    p.add_argument("--train-world-model", action="store_true",
                   help="train a frame predictor and a success model on world_model.datasets "
                        "in this process (run.mode=train_world_model); world_model.pt in "
                        "<run.log_dir>")
    p.add_argument("--profile", action="store_true",
                   help="profile the pipeline for profile.duration_s (60) seconds, then print "
                        "the bottleneck; report and Chrome trace in <run.log_dir>")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint (run.log_dir=RUN_DIR): "
                        "versions, optimizer, schedule and TensorBoard steps carry on")
    p.add_argument("--single-process", action="store_true",
                   help="all roles as threads of one process, in-process transport")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    return p.parse_intermixed_args(argv)  # overrides may follow the flags


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
    from configs import ConfigError
    from links.registration import EXIT_CONFIG_ERROR, EXIT_LEARNER_GONE, LearnerGone, Retired

    stop = threading.Event()
    _stop_on_signals(stop)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the placement's GPUs (launcher/placement.py)
        log.info("%s %d: CUDA_VISIBLE_DEVICES=%r", role, index,
                 os.environ["CUDA_VISIBLE_DEVICES"])
    try:
        if role == "learner" and cfg.run.mode in ("eval", "record"):
            from learner.evaluator import run
            code = run(cfg, stop=stop)
        elif role == "learner" and index > 0:  # a data-parallel rank (learner.num_ranks)
            from learner.worker import run_rank
            code = run_rank(cfg, index)
        elif role == "learner":
            from learner.worker import run
            code = run(cfg, stop=stop)
        elif role == "inference":
            from inference_server.server import run
            code = run(cfg, index, stop=stop)
        else:
            from actors.worker import run
            code = run(cfg, index, stop=stop)
    except ConfigError as exc:
        log.error("%s %d: config error: %s", role, index, exc)
        code = EXIT_CONFIG_ERROR
    except LearnerGone as exc:
        log.error("%s %d: %s", role, index, exc)
        code = EXIT_LEARNER_GONE
    except Retired as exc:
        log.warning("%s", exc)
        code = 1
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


def run_sft(cfg) -> int:
    """Behaviour cloning (``run.mode: sft``) or a world model's training
    (``run.mode: train_world_model``) in this process."""
    import torch

    from configs import ConfigError
    from learner.checkpoint import CheckpointError
    if cfg.run.mode == "sft":
        from sft.trainer import run
    else:
        from worldmodel.train import run

    torch.set_num_threads(cfg.run.torch_threads)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        return run(cfg, stop)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        log.error("%s failed: %s", cfg.run.mode, exc)
        return 2


def run_single_process(cfg) -> int:
    """Every role as a thread of this process, over inproc sockets and in-memory weights."""
    import torch
    import zmq

    from actors.worker import run as run_actor
    from inference_server.server import run as run_server
    from learner.evaluator import run as run_evaluator
    from learner.worker import run as run_trainer
    from links.weights import InProcWeightBus, serving_dtype

    torch.set_num_threads(cfg.run.torch_threads)
    ctx, bus, stop = zmq.Context(), InProcWeightBus(serving_dtype(cfg)), threading.Event()
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

    run_learner = run_trainer if cfg.run.mode == "train" else run_evaluator
    threads = [guard("learner", run_learner, cfg, ctx, weights=bus, stop=stop)]
    threads += [guard(f"inference-{i}", run_server, cfg, i, ctx, weights_bus=bus, stop=stop)
                for i in range(cfg.inference.num_servers if cfg.inference_needed else 0)]
    threads += [guard(f"actor-{k}", run_actor, cfg, k, ctx, stop=stop)
                for k in range(cfg.total_actors)]
    for t in threads:
        t.start()
    threads[0].join()
    for t in threads[1:]:
        t.join(timeout=cfg.actor.flush_timeout_s + 15)
    stop.set()
    ctx.term()
    return 1 if failures else 0


def supervise(cfg, args: argparse.Namespace, overrides: list[str],
              slots: list[tuple[str, int]]) -> int:
    """Run ``slots`` as supervised children until the learner finishes (or, on a host
    without the learner, until its roles end); restart the ones that die."""
    from launcher import MemorySampler, Supervisor
    from launcher.placement import PlacementError, make_plan, visible_gpus
    from launcher.supervisor import python_argv, restart_overrides

    log_dir = Path(cfg.run.log_dir)

    def command(slot) -> list[str]:
        cmd = python_argv() + (["--config", args.config] if args.config else [])
        extra = restart_overrides(slot.role, slot.starts, log_dir, cfg.learner.checkpoint_every)
        return cmd + [*overrides, *extra, "--worker", "--role", slot.role, "--index",
                      str(slot.index), "--log-level", args.log_level]

    try:
        plan = make_plan(cfg, slots, visible_gpus())
    except PlacementError as exc:
        log.error("config error: %s", exc)
        return 2
    log.info("%s", plan.describe())

    def environ(slot) -> dict | None:  # each child sees only its GPUs
        if not plan.gpus:
            return None
        return {**os.environ, "CUDA_VISIBLE_DEVICES": plan.visible_devices(slot.name)}

    sup = Supervisor(cfg, slots, command, log_dir, "pids.json" if len(slots) > 1 else
                     f"pids-{slots[0][0]}-{slots[0][1]}.json", environ)
    interrupted = threading.Event()
    _stop_on_signals(interrupted)  # Ctrl-C reaches the children too; SIGTERM is passed on
    has_learner = ("learner", 0) in slots  # a data-parallel rank's host ends with its roles
    try:
        sup.start_all()
        sampler = MemorySampler(log_dir / ("memory.csv" if has_learner else
                                           f"memory-{slots[0][0]}-{slots[0][1]}.csv"), sup)
        while True:
            if interrupted.is_set():
                log.info("interrupted: stopping every role")
                sup.stop_all(grace_s=cfg.actor.flush_timeout_s + 40)
                return 130
            sampler.maybe_sample()
            state = sup.check()
            if state.startswith("failed"):
                log.error("%s; stopping", state[len("failed: "):])
                sup.stop_all(grace_s=10)
                return 1
            if state == "learner finished":
                break
            if not has_learner and sup.all_ended():  # this host's roles are done
                codes = [s.ended for s in sup.slots.values()]
                if any(codes):
                    log.error("this host's roles ended with %s", codes)
                    return 1
                break
            time.sleep(0.5)
        bad = sup.wait_all(cfg.actor.flush_timeout_s + 15)
        if bad:
            sup.stop_all(grace_s=5)
            return 1
        if sup.restarts:
            log.info("%d restarts during the run", sup.restarts)
        log.info("run finished: TensorBoard logs in %s", log_dir)
        return 0
    finally:
        sup.stop_all(grace_s=5)


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
    """Unknown suite/task names and a missing model, checkpoint or world model fail here,
    before any role starts; for simulators, the GL backend is chosen once and inherited
    by every child."""
    from envs import check_env_config, prepare_rendering

    check_env_config(cfg.env)
    if cfg.model.model_path and not Path(cfg.model.model_path).exists():
        raise ValueError(f"model.model_path {cfg.model.model_path!r} does not exist; give a "
                         "local checkpoint directory (nothing is downloaded)")
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
        raise ValueError(f"model.checkpoint {cfg.model.checkpoint!r} is not a file; give a "
                         "run's checkpoint.pt, or leave it empty for fresh weights")
    wm = cfg.env.world_model
    if cfg.env.kind == "world_model" and cfg.run.mode not in ("train_world_model", "sft"):
        missing = [p for p in (wm.checkpoint, *wm.reset_data) if not Path(p).exists()]
        if missing:
            raise ValueError(f"env.world_model: {missing} not found; train one with "
                             "--train-world-model and set env.world_model.checkpoint and "
                             "reset_data to its world_model.pt and recordings")
    try:
        backend = prepare_rendering(cfg.env)
    except RuntimeError as exc:  # envs.render.RenderError
        raise ValueError(str(exc)) from exc
    if backend != "none":
        log.info("rendering: MUJOCO_GL=%s%s", backend,
                 ", fast (no multisampling, shadows, reflections)" if cfg.env.fast_render
                 else "")


def make_keys(argv: list[str]) -> int:
    """``launch.py keys DIR``: the CURVE key pairs of a run."""
    if len(argv) != 1:
        print("usage: python launch.py keys DIR", file=sys.stderr)
        return 2
    from links.security import make_keys as make

    try:
        folder = make(argv[0])
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"CURVE keys in {folder} (server, client, authorized/): copy the folder to every "
          f"host of the run and set network.curve_dir={folder}")
    return 0


def export_policy(argv: list[str]) -> int:
    """``launch.py export RUN_DIR OUT``: the trained policy in the layout it was loaded
    from (:mod:`models.export`)."""
    if len(argv) != 2:
        print("usage: python launch.py export RUN_DIR OUT", file=sys.stderr)
        return 2
    from configs import ConfigError
    from models.export import ExportError, export

    try:
        out = export(argv[0], argv[1])
    except (ExportError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {argv[0]} to {out} (what and from where: {out / 'export.json'})")
    return 0


def main(argv=None) -> int:
    """The ``launch.py`` command line (``argv``: default ``sys.argv[1:]``); returns the exit
    status (2 for a bad command line or config)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["keys"]:
        return make_keys(argv[1:])
    if argv[:1] == ["export"]:
        return export_policy(argv[1:])
    args = parse_args(argv)
    from configs import ConfigError, load_config

    overrides = list(args.overrides)
    if args.single_process:
        overrides.append("network.transport=inproc")
    if sum((args.eval, args.record, args.sft, args.train_world_model)) > 1:
        print("error: --eval, --record, --sft and --train-world-model exclude each other",
              file=sys.stderr)
        return 2
    if args.eval:
        overrides += ["run.mode=eval", "actor.group_size=1"]
    if args.record:
        overrides += ["run.mode=record", "actor.group_size=1"]
    if args.sft:
        overrides.append("run.mode=sft")
    if args.train_world_model:
        overrides.append("run.mode=train_world_model")
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
    if args.worker:
        if not args.role:
            print("error: --worker needs --role", file=sys.stderr)
            return 2
        setup_logging(args.log_level, log_dir / f"{args.role}-{args.index}.log",
                      f"{args.role}-{args.index}")
        return run_role(cfg, args.role, args.index)  # the actor checks its env itself
    if args.role:  # one role on this host, supervised
        name = f"{args.role}-{args.index}"
        setup_logging(args.log_level, log_dir / f"launch-{name}.log", f"launch-{name}")
        log.info("run %s: supervising %s on this host, logs in %s", cfg.run.run_id, name,
                 log_dir)
        return supervise(cfg, args, overrides, [(args.role, args.index)])
    one_process = cfg.run.mode in ("sft", "train_world_model")
    tag = cfg.run.mode if one_process else "launch"
    setup_logging(args.log_level, log_dir / f"{tag}.log", tag)
    try:
        check_env(cfg)
    except ValueError as exc:
        log.error("config error: %s", exc)
        return 2
    log.info("run %s: config %s, logs in %s", cfg.run.run_id, args.config or "(defaults)",
             log_dir)
    if cfg.profile.enabled:  # a report merges every file there: none from an older run
        shutil.rmtree(log_dir / "profile", ignore_errors=True)
    if one_process:  # no actors, servers or sockets
        return run_sft(cfg)
    if args.single_process:
        return report_profile(cfg, run_single_process(cfg))
    slots = [("learner", r) for r in range(cfg.learner_ranks)]
    if cfg.inference_needed:
        slots += [("inference", i) for i in range(cfg.inference.num_servers)]
    slots += [("actor", k) for k in range(cfg.total_actors)]
    try:
        return report_profile(cfg, supervise(cfg, args, overrides, slots))
    finally:
        if cfg.network.transport == "ipc":
            from links.wiring import ipc_folder
            shutil.rmtree(ipc_folder(cfg), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
