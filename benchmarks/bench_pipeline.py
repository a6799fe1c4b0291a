"""The asynchronous pipeline against a synchronous lock-step baseline, and what profiling costs.

What it measures
    pipeline  One actor process of E envs, one inference server, the learner: real
              processes (``launch.py``) with the small CPU policy on the synthetic task.
              *sync* is the lock-step loop RLinf runs by default: all E envs step their
              chunk, then one batched inference for all E, then all step again
              (``actor.pipeline_stages=1``). *async* is chunkrl's pipeline with the same
              envs, policy and processes: two stages of E/2, one stepping while the
              other's chunk is computed (``actor.pipeline_stages=2``). Env and inference
              costs are balanced: a calibration run measures the server's compute time
              for a batch of E and the actor's own time a cycle (rendering, sending,
              stepping), and the synthetic env's sleep per step makes up the difference,
              so env time = inference time a cycle (two equal stages: 2x is the ideal).
              The learner acknowledges and assembles every episode but trains only on
              the first groups (``learner.sync_every`` huge, ``max_staleness=0``: every
              later group is stale): on 2 cores its training would take the core the
              overlap needs; on a GPU host it trains on its own device.
              Figures: env steps/s over each run's steady window (``--profile``),
              ``--repeats`` runs of each arm alternating; ratio async/sync of the medians.
    overhead  The default run (``configs/synthetic_grpo.yaml``: 2 actors x 16 envs)
              with and without ``--profile``, env steps/s from the actors' own counts
              over their acting time; ratio on/off of the medians. Alongside, the cost
              of the instrumentation itself: profiler calls a second in the profiled
              run (from its totals) times the measured cost of one call, as a share of
              the cores in use.

How to run
    .venv/bin/python benchmarks/bench_pipeline.py                 # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_pipeline.py --seconds 8 --repeats 1   # a smoke run
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from harness import actor_rate, launch_run, markdown, profiled, stamp

N = 8  # actions executed per chunk (= T, the synthetic config's)



def pipeline_overrides(envs: int, stages: int, sleep_ms: float, args) -> dict:
    # The learner acknowledges and assembles every episode but trains only on the first
    # groups (no new weights go out, so every later group is stale and dropped): its
    # training would take one of the two cores this comparison of rollout loops is about.
    return {"actor.num_actors": 1, "actor.envs_per_actor": envs,
            "actor.pipeline_stages": stages, "actor.max_unacked_episodes": 256,
            "learner.max_ready_groups": 64, "learner.sync_every": 10**9,
            "learner.max_staleness": 0, "inference.max_wait_ms": 0,
            "env.synthetic.step_sleep_ms": sleep_ms, "env.image_size": args.image_size,
            "model.cnn.conv_channels": args.conv_channels}


def calibrate(envs: int, seconds: float, args, rounds: int = 2) -> float:
    """The env sleep per step (ms) that makes a sync cycle's env side (stepping,
    rendering, sending) as long as its inference side (a batch of E, transport
    included); two rounds, the second correcting what the first's sleeps overshot."""
    sleep_ms = 0.0
    for k in range(rounds):
        r = profiled(pipeline_overrides(envs, 1, sleep_ms, args), seconds,
                     min(3.0, seconds / 3))
        inference_ms = r["inference"]["latency_ms"]["total"]["p50"]
        actor_ms = r["actors"]["chunk_step_ms"]["p50"] + r["actors"]["observe_send_ms"]["p50"]
        sleep_ms = max(0.0, sleep_ms + (inference_ms - actor_ms) / (envs * N))
        print(f"calibration {k + 1}: a sync cycle's inference {inference_ms:.2f} ms, env side "
              f"{actor_ms:.2f} ms -> env.synthetic.step_sleep_ms={sleep_ms:.4f}", flush=True)
    return sleep_ms


def bench_pipeline(args) -> list[dict]:
    sleep_ms = calibrate(args.envs, args.calibration_s, args)
    rates: dict = {"sync": [], "async": []}
    reports: dict = {}
    for r in range(args.repeats):
        for arm in (("sync", "async") if r % 2 == 0 else ("async", "sync")):
            stages = 1 if arm == "sync" else 2
            rep = profiled(pipeline_overrides(args.envs, stages, sleep_ms, args),
                           args.seconds, args.warmup)
            rates[arm].append(rep["actors"]["env_steps_per_s"])
            reports[arm] = rep
            print(f"{arm}: {rates[arm][-1]:,.0f} env steps/s (servers busy "
                  f"{rep['inference']['busy_fraction']:.0%}, actor waiting "
                  f"{rep['actors']['wait_action_fraction']:.0%})", flush=True)
    med = {arm: statistics.median(v) for arm, v in rates.items()}
    return [{"arm": arm, "stages": 1 if arm == "sync" else 2, "envs": args.envs,
             "image": args.image_size, "channels": args.conv_channels,
             "sleep_ms": sleep_ms, "runs": len(rates[arm]), "rate": med[arm],
             "busy": reports[arm]["inference"]["busy_fraction"],
             "waiting": reports[arm]["actors"]["wait_action_fraction"],
             "ratio": med[arm] / med["sync"]} for arm in ("sync", "async")]


def call_cost_us(calls: int = 200_000) -> float:
    """Microseconds one ``Profiler.add`` (with its clock reads) costs here."""
    from profiling.recorder import Profiler

    prof = Profiler("bench", max_events=calls)
    start = time.perf_counter()
    for _ in range(calls):
        t = time.time()
        prof.add("x", t, time.time(), stage=0)
    return (time.perf_counter() - start) / calls * 1e6


def bench_overhead(args) -> list[dict]:
    rates: dict = {"off": [], "on": []}
    calls_per_s, cores = [], []
    for r in range(args.repeats):
        for arm in (("off", "on") if r % 2 == 0 else ("on", "off")):
            if arm == "off":
                run = launch_run({"run.max_duration_s": args.seconds, "run.total_updates": 10**9})
            else:
                run = launch_run({"profile.duration_s": args.seconds,
                                  "profile.warmup_s": args.warmup}, profile=True)
                profiles = [json.loads(f.read_text()) for f in (run / "profile").glob("*.json")]
                calls = sum(t[0] for p in profiles for t in p["totals"].values()) + \
                    sum(len(v) for p in profiles for v in p["samples"].values())
                calls_per_s.append(calls / args.seconds)
                report = json.loads((run / "profile_report.json").read_text())
                cores.append(sum(h["cores_used"] for h in report["cpu"]["hosts"].values()))
            rates[arm].append(actor_rate(run))
            print(f"profile {arm}: {rates[arm][-1]:,.0f} env steps/s", flush=True)
    cost = call_cost_us()
    share = 100 * statistics.median(calls_per_s) * cost / 1e6 / statistics.median(cores)
    med = {arm: statistics.median(v) for arm, v in rates.items()}
    return [{"arm": "without --profile", "runs": len(rates["off"]), "rate": med["off"]},
            {"arm": "with --profile", "runs": len(rates["on"]), "rate": med["on"],
             "ratio": med["on"] / med["off"],
             "calls": statistics.median(calls_per_s), "cost_us": cost, "share": share}]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", type=int, default=32, help="E: envs of the actor (32)")
    p.add_argument("--image-size", type=int, default=32, help="env images, H = W (32)")
    # A wider image encoder than the default 16 channels: more of a cycle is inference
    # and env sleep, less the actor's own CPU work (rendering, messages), which on 2 cores
    # competes with the server for a core instead of overlapping with it.
    p.add_argument("--conv-channels", type=int, default=48, help="model.cnn.conv_channels (48)")
    p.add_argument("--seconds", type=float, default=20.0, help="each run's profile (20)")
    p.add_argument("--warmup", type=float, default=5.0, help="left out of rates (5)")
    p.add_argument("--calibration-s", type=float, default=10.0, help="each calibration run (10)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each arm (2)")
    p.add_argument("--only", choices=("pipeline", "overhead"), help="one part only")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    if args.envs % 16 or args.repeats < 1 or args.seconds <= args.warmup:
        p.error("--envs: a multiple of 16 (two stages of whole groups of 8); --repeats >= 1; "
                "--seconds > --warmup")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# chunkrl pipeline benchmark: {stamp()}", flush=True)
    out = {}
    if args.only in (None, "pipeline"):
        out["pipeline"] = rows = bench_pipeline(args)
        print(markdown("Pipeline: env steps/s, one actor, balanced env and inference costs",
                       rows, {"loop": "arm", "stages": "stages", "envs": "envs",
                              "image px": "image", "conv channels": "channels",
                              "env sleep/step (ms)": "sleep_ms", "runs": "runs",
                              "env steps/s (median)": "rate", "server busy": "busy",
                              "actor waiting": "waiting", "vs sync": "ratio"}))
    if args.only in (None, "overhead"):
        out["overhead"] = rows = bench_overhead(args)
        print(markdown("Profiling overhead: the default run with and without --profile", rows,
                       {"run": "arm", "runs": "runs", "env steps/s (median)": "rate",
                        "with/without": "ratio", "profiler calls/s": "calls",
                        "us a call": "cost_us", "instrumentation % of cores used": "share"}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
