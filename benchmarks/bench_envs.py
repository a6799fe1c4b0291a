"""Env-layer steps/s of chunkrl's LIBERO/robosuite envs vs the simulators' own API.

What it measures
    Steps/s with two cameras (agentview, robot0_eye_in_hand) at S x S for LIBERO
    (libero_spatial task 0) and robosuite (Lift, Panda, OSC_POSE) x S in (224, 128) x
    rendering in (default, fast), three ways side by side in the same run:

    raw    the simulator's own API and cameras, as without chunkrl (see build_raw):
           ``OffScreenRenderEnv`` + ``reset()`` + ``set_init_state(init_states[0])``, or
           ``robosuite.make("Lift", ..., use_camera_obs=True)`` + ``reset()``, both with
           ``ignore_done=True, horizon=10**6`` (no per-step cost; the episode never
           ends), then ``env.step(noop)``, which renders both cameras every step.
    step   chunkrl's ``make_env`` + ``reset_group``, then ``env.step`` + ``env.observe``
           every step: the same work. overhead = 1 - step/raw; the target is <= 5%.
    chunk  chunkrl, 8 ``env.step`` then one ``env.observe``, as the actor does (it renders
           only for the policy): a feature, shown with its speed-up, not as overhead.

    "fast" is chunkrl's ``fast_render`` (no multisampling, shadows or reflections).
    Raw-fast gets the same in robosuite's own render context after the reset (which
    rebuilds that context): GL context made current, ``model.vis.quality.offsamples = 0``,
    ``con.free()`` + ``_set_mujoco_context_and_buffers()`` (a new MjrContext),
    ``scn.flags`` mjRND_SHADOW = mjRND_REFLECTION = 0. Otherwise raw keeps robosuite's
    defaults (e.g. a 640x480 offscreen buffer; chunkrl sizes it to the image).

    Each side has its own spawned worker process per simulator, building and closing one
    env per case (robosuite makes a GL context per env and never makes it current; chunkrl
    shares one per process: they are not mixed in a process); one runs at a time. Each
    measurement is ``--seconds`` after a warm-up; ``--repeats`` rounds alternate the order
    (raw, step, chunk / chunk, step, raw) against drift; medians are reported. Build times
    (construction + first reset; raw's is robosuite's default hard reset, a second build)
    are information only.

How to run
    .venv/bin/python benchmarks/bench_envs.py          # every case, 5-6 min on 2 cores
    .venv/bin/python benchmarks/bench_envs.py --sims robosuite --sizes 128 --render fast \
        --seconds 1 --repeats 1 --json envs.json # a smoke run; results also as JSON
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNK = 8
CAMERAS = ["agentview", "robot0_eye_in_hand"]
SIMS, SIZES, RENDERS = ("libero", "robosuite"), (224, 128), ("default", "fast")
MODES = ("raw", "step", "chunk")
NOOP = [0.0] * 6 + [-1.0]
WARMUP_STEPS = 4  # untimed steps after a build (plus one call before each measurement)


# --- worker side: one process, one env at a time -------------------------------------

def make_fast(sim) -> None:
    """chunkrl's fast_render settings, applied to robosuite's own render context."""
    import mujoco

    ctx = sim._render_context_offscreen
    ctx.gl_ctx.make_current()
    sim.model._model.vis.quality.offsamples = 0  # read when the MjrContext is made
    ctx.con.free()
    ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


def build_raw(sim: str, size: int, fast: bool):
    import numpy as np

    common = dict(camera_heights=size, camera_widths=size, ignore_done=True, horizon=10**6)
    if sim == "libero":
        from libero.libero import benchmark
        from libero.libero.envs import OffScreenRenderEnv

        suite = benchmark.get_benchmark_dict()["libero_spatial"]()
        env = OffScreenRenderEnv(bddl_file_name=suite.get_task_bddl_file_path(0), **common)
        env.reset()
        env.set_init_state(suite.get_task_init_states(0)[0])
    else:
        import robosuite
        from robosuite.controllers import load_controller_config

        env = robosuite.make(
            "Lift", robots="Panda",
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False, has_offscreen_renderer=True, use_camera_obs=True,
            camera_names=CAMERAS, control_freq=20, **common)
        env.reset()
    if fast:
        make_fast(env.sim)
    noop = np.array(NOOP)  # made once, as chunkrl's side does
    return env, {"raw": (lambda: env.step(noop), 1)}


def build_chunkrl(sim: str, size: int, fast: bool):
    import numpy as np

    from configs import EnvConfig
    from envs import make_env

    env = make_env(EnvConfig(kind=sim, image_size=size, fast_render=fast, wrist_camera=True,
                             max_episode_steps=10**6, settle_steps=0), 1, 1, 7)
    env.reset_group(0, 0)  # LIBERO: task 0, official init state 0; robosuite: seed 0
    ids, noop = np.array([0]), np.array([NOOP], np.float32)

    def steps_then_observe(n: int) -> None:
        for _ in range(n):
            env.step(ids, noop)
        env.observe(ids)  # both cameras, once

    return env, {"step": (lambda: steps_then_observe(1), 1),
                 "chunk": (lambda: steps_then_observe(CHUNK), CHUNK)}


def worker_main(conn, side: str, sim: str, log_path: str) -> None:
    """Serve build / measure / close requests until told to exit."""
    # robosuite and LIBERO print warnings on import and build: keep them out of the table.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for std in (1, 2):
        os.dup2(fd, std)
    env, loops = None, {}
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "build":
                size, fast = args
                start = time.perf_counter()
                env, loops = (build_raw if side == "raw" else build_chunkrl)(sim, size, fast)
                build_s = time.perf_counter() - start
                for fn, n in loops.values():  # warm caches and the GL pipeline
                    for _ in range(max(1, WARMUP_STEPS // n)):
                        fn()
                gl = "unknown"
                with contextlib.suppress(Exception):  # the env's GL context is current
                    from OpenGL import GL
                    gl = GL.glGetString(GL.GL_RENDERER).decode()
                conn.send(("ok", {"build_s": build_s, "gl": gl}))
            elif cmd == "measure":
                mode, seconds = args
                fn, n = loops[mode]
                fn()  # untimed: the other worker may just have evicted our caches
                steps, elapsed, start = 0, 0.0, time.perf_counter()
                while elapsed < seconds:
                    fn()
                    steps += n
                    elapsed = time.perf_counter() - start
                conn.send(("ok", {"steps": steps, "seconds": elapsed}))
            else:  # close or exit
                if env is not None:
                    env.close()  # frees the env's GL context(s) before the next case
                env, loops = None, {}
                conn.send(("ok", None))
                if cmd == "exit":
                    return
        except Exception:  # noqa: BLE001 -- reported to the parent, which fails loudly
            conn.send(("error", traceback.format_exc()))


class Worker:
    """A spawned worker process and its pipe."""

    def __init__(self, side: str, sim: str, tmp: str):
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited GL or MuJoCo
        self.name, self.log = f"{sim}/{side}", os.path.join(tmp, f"{sim}-{side}.log")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, side, sim, self.log),
                                daemon=True)
        self.proc.start()
        child.close()

    def call(self, *msg, timeout: float = 600.0):
        self.conn.send(msg)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name}: no answer to {msg[0]} in {timeout:.0f} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "error", f"worker died (exit code {self.proc.exitcode})"
        if status != "ok":  # its traceback, then the end of its stdout/stderr
            tail = Path(self.log).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} {msg[0]} failed:\n{value}\n--- log ---\n{tail}")
        return value

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.call("exit", timeout=30)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


# --- orchestration -------------------------------------------------------------------

def run_case(raw: Worker, ck: Worker, sim: str, size: int, render: str, args) -> dict:
    fast = render == "fast"
    builds = {"raw": raw.call("build", size, fast), "chunkrl": ck.call("build", size, fast)}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            res = (raw if mode == "raw" else ck).call("measure", mode, args.seconds)
            rates[mode].append(res["steps"] / res["seconds"])
    raw.call("close")  # on an error main stops the workers, which frees everything
    ck.call("close")
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {"sim": sim, "size": size, "render": render, "rates": rates, "median": med,
            "overhead": 1.0 - med["step"] / med["raw"], "speedup": med["chunk"] / med["raw"],
            "build_s": {k: v["build_s"] for k, v in builds.items()},
            "gl_renderer": builds["chunkrl"]["gl"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    subsets = {"sims": SIMS, "sizes": SIZES, "render": RENDERS}
    for name, valid in subsets.items():
        p.add_argument(f"--{name}", default=",".join(map(str, valid)),
                       help="comma-separated subset of %(default)s (default all)")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (3)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per case; median (3)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    for name, valid in subsets.items():
        items = [v for v in valid if str(v) in getattr(args, name).split(",")]
        if not items or set(getattr(args, name).split(",")) - {str(v) for v in valid}:
            p.error(f"--{name}: a comma-separated subset of {','.join(map(str, valid))}")
        setattr(args, name, items)
    if args.seconds <= 0 or args.repeats < 1:
        p.error("--seconds > 0 and --repeats >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # The GL backend is fixed when MuJoCo is first imported: choose it now; the spawned
    # workers inherit it through MUJOCO_GL / PYOPENGL_PLATFORM / CHUNKRL_GL_BACKEND.
    from configs import EnvConfig
    from envs import prepare_rendering

    backend = prepare_rendering(EnvConfig(kind="libero"))
    print(f"# chunkrl env benchmark: MUJOCO_GL={backend}; {args.seconds:g} s per "
          f"measurement, median of {args.repeats}; chunk N={CHUNK}; cameras "
          f"{'+'.join(CAMERAS)}; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="chunkrl-bench-envs-") as tmp:
        for sim in args.sims:
            raw, ck = Worker("raw", sim, tmp), Worker("chunkrl", sim, tmp)
            try:
                for size, render in itertools.product(args.sizes, args.render):
                    res = run_case(raw, ck, sim, size, render, args)
                    results.append(res)
                    if len(results) == 1:
                        print(f"# GL renderer: {res['gl_renderer']}")
                    m, b = res["median"], res["build_s"]
                    print(f"{sim} {size} {render}: raw {m['raw']:.1f}, step {m['step']:.1f}, "
                          f"chunk {m['chunk']:.1f} steps/s; overhead {res['overhead']:+.1%}; "
                          f"build raw {b['raw']:.2f} s, chunkrl {b['chunkrl']:.2f} s",
                          flush=True)
            finally:
                raw.stop()
                ck.stop()
    print("\n| sim | size | render | raw steps/s | chunkrl per-step steps/s | overhead "
          f"| chunkrl per-chunk (N={CHUNK}) steps/s | speed-up |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        m, ok = r["median"], "ok" if r["overhead"] <= 0.05 else "OVER 5%"
        print(f"| {r['sim']} | {r['size']} | {r['render']} | {m['raw']:.1f} | "
              f"{m['step']:.1f} | {r['overhead']:+.1%} ({ok}) | {m['chunk']:.1f} | "
              f"{r['speedup']:.2f}x |")
    if args.json:
        meta = {"mujoco_gl": backend, "seconds": args.seconds, "repeats": args.repeats,
                "chunk": CHUNK, "cpus": os.cpu_count(), "python": platform.python_version()}
        Path(args.json).write_text(json.dumps({"meta": meta, "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
