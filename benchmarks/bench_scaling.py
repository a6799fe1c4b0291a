"""Env steps/s against the number of actor processes, until the inference server saturates.

What it measures
    For each n in --actors: a real run (``launch.py --profile``) of n actor processes of
    8 synthetic envs each (two pipeline stages of one group of 4), one inference server
    and the learner, with the small CPU policy. The envs cost --sleep-ms of sleep a step
    (a simulator that waits, as one on another core or a GPU would), so actors add load
    without taking the CPU the server needs. The learner acknowledges and assembles every
    episode but trains only on the first groups (as in benchmarks/bench_pipeline.py), so its
    training does not take a core from the server.
    Figures: env steps/s over the steady window; linear = n x the 1-actor rate;
    efficiency = measured / linear; the server's busy share and batch fill say where it
    saturates. Goal: efficiency >= 0.9 below saturation.

How to run
    .venv/bin/python benchmarks/bench_scaling.py                  # 1..32 actors, ~3 min
    .venv/bin/python benchmarks/bench_scaling.py --actors 1,2,4 --seconds 8
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import markdown, profiled, stamp


def overrides(actors: int, args) -> dict:
    return {"actor.num_actors": actors, "actor.envs_per_actor": 8,
            "actor.pipeline_stages": 2, "actor.group_size": 4,
            "actor.max_unacked_episodes": 64, "actor.flush_timeout_s": 30,
            "learner.groups_per_update": 2, "learner.max_ready_groups": 64,
            "learner.sync_every": 10**9, "learner.max_staleness": 0,
            "env.image_size": args.image_size, "env.synthetic.step_sleep_ms": args.sleep_ms,
            "inference.max_wait_ms": args.max_wait_ms}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--actors", default="1,2,4,8,16,32", help="actor counts (1,2,4,8,16,32)")
    p.add_argument("--sleep-ms", type=float, default=2.0, help="env sleep a step (2)")
    p.add_argument("--image-size", type=int, default=32, help="env images, H = W (32)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="inference.max_wait_ms (2)")
    p.add_argument("--seconds", type=float, default=15.0, help="each run's profile (15)")
    p.add_argument("--warmup", type=float, default=4.0, help="left out of rates (4)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.actors = sorted({int(a) for a in args.actors.split(",") if a.strip()})
    if not args.actors or args.actors[0] != 1:
        p.error("--actors must include 1 (the linear reference)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# chunkrl scaling benchmark: {stamp()}", flush=True)
    rows, base = [], None
    for n in args.actors:
        r = profiled(overrides(n, args), args.seconds, args.warmup)
        rate = r["actors"]["env_steps_per_s"]
        base = base or rate
        rows.append({"actors": n, "envs": 8 * n, "rate": rate, "linear": base * n,
                     "efficiency": rate / (base * n), "busy": r["inference"]["busy_fraction"],
                     "fill": r["inference"]["fill_ratio"],
                     "waiting": r["actors"]["wait_action_fraction"],
                     "bottleneck": r["bottleneck"]["stage"]})
        print(f"{n} actors: {rate:,.0f} env steps/s ({rate / (base * n):.2f} of linear), "
              f"server busy {rows[-1]['busy']:.0%}, bottleneck {rows[-1]['bottleneck']}",
              flush=True)
    print(markdown(f"Scaling: actors of 8 envs ({args.sleep_ms:g} ms sleep a step), one "
                   "inference server", rows,
                   {"actors": "actors", "envs": "envs", "env steps/s": "rate",
                    "linear": "linear", "efficiency": "efficiency", "server busy": "busy",
                    "batch fill": "fill", "actors waiting": "waiting",
                    "profile's bottleneck": "bottleneck"}))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
