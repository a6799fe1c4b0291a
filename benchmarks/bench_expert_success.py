r"""Success rate and speed of the scripted experts (experts/) on their tasks.

What it measures
    Each task's expert runs one episode per initial state through ``make_env`` (no
    cameras are rendered: ``observe`` is never called), ``--envs`` episodes at a time
    (one env per group, each from its own state), up to the task's step limit (LIBERO:
    the suite's own, spatial 220, object 280; robosuite 200). Optional Gaussian noise of
    std ``--noise`` is added to the six arm dims of every action, as recording does. One
    Markdown table per run: per task, successes/trials, the mean steps of successful
    episodes, env steps per second (all envs together, resets included), and the failed
    states with the phase their expert ended in.

    State ids are ``task*1000 + k``; LIBERO: k < 50 official init states, k >= 50
    generated placements; robosuite: k is the reset seed. Evaluation uses k = 0..49,
    demonstrations k >= 100.

How to run
    .venv/bin/python benchmarks/bench_expert_success.py --suite robosuite --task Lift \
        --states 100:120
    .venv/bin/python benchmarks/bench_expert_success.py --suite libero_spatial --tasks all \
        --states 0:50
    .venv/bin/python benchmarks/bench_expert_success.py --suite libero_object --tasks 0,3 \
        --noise 0.2
Figures go to benchmarks/experts_results.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from configs import EnvConfig, LiberoEnvConfig, RobosuiteEnvConfig
from envs import make_env
from envs.base import INIT_STRIDE
from experts import make_expert

LIBERO_SUITES = ("libero_spatial", "libero_object")


def parse_states(text: str) -> list[int]:
    """``"100:120"`` -> 100..119; ``"3,7"`` -> [3, 7]."""
    if ":" in text:
        lo, hi = text.split(":")
        return list(range(int(lo), int(hi)))
    return [int(k) for k in text.split(",")]


def run_task(cfg: EnvConfig, task_index: int, states: list[int], num_envs: int,
             noise: float, seed: int) -> dict:
    """Every state's episode of one task: successes, steps and speed."""
    env = make_env(cfg, num_envs, 1, 7)
    expert = make_expert(cfg, env)
    rng = np.random.default_rng(seed)
    queue = [task_index * INIT_STRIDE + k for k in states]
    running: dict[int, int] = {}  # env slot -> state id
    steps, failures, total_steps = [], [], 0
    start = time.perf_counter()
    while queue or running:
        for e in range(num_envs):
            if e not in running and queue:
                running[e] = queue.pop(0)
                env.reset_group(e, running[e])
                expert.reset(e)
        ids = np.array(sorted(running))
        actions = expert.act(ids)
        actions[:, :6] += noise * rng.standard_normal((len(ids), 6)).astype(np.float32)
        res = env.step(ids, actions)
        total_steps += len(ids)
        for row, e in enumerate(ids):
            if res.terminated[row] or res.truncated[row] or res.errors[row]:
                state = running.pop(int(e))
                if res.success[row]:
                    steps.append(env.slots[int(e)].steps)
                else:
                    ctrl = getattr(expert, "controllers", {}).get(int(e))
                    why = res.errors[row][:40] or (ctrl.phase.value if ctrl else "?")
                    failures.append(f"{state % INIT_STRIDE}({why})")
    elapsed = time.perf_counter() - start
    env.close()
    return {"successes": len(steps), "trials": len(states),
            "mean_steps": float(np.mean(steps)) if steps else float("nan"),
            "steps_per_s": total_steps / elapsed, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="robosuite",
                        choices=("robosuite",) + LIBERO_SUITES)
    parser.add_argument("--task", default="Lift", help="robosuite: the task's name")
    parser.add_argument("--tasks", default="all",
                        help="LIBERO: task ids, comma-separated, or 'all'")
    parser.add_argument("--states", default="100:120",
                        help="state indices k (id = task*1000+k): 'a:b' or 'k1,k2'")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the 6 arm dims of each action")
    parser.add_argument("--envs", type=int, default=2, help="episodes run at once")
    parser.add_argument("--seed", type=int, default=0, help="the noise's seed")
    args = parser.parse_args()

    states = parse_states(args.states)
    if args.suite == "robosuite":
        runs = [(args.task, EnvConfig(kind="robosuite", robosuite=RobosuiteEnvConfig(args.task),
                                      image_size=32, fast_render=True, wrist_camera=False), 0)]
    else:
        from envs.libero import LiberoSuite

        count = LiberoSuite(args.suite).num_tasks
        tasks = range(count) if args.tasks == "all" else [int(t) for t in args.tasks.split(",")]
        runs = [(f"{args.suite} {t}", EnvConfig(kind="libero",
                                                libero=LiberoEnvConfig(args.suite, [t]),
                                                image_size=32, fast_render=True,
                                                wrist_camera=False), t) for t in tasks]
    print(f"states {args.states}, noise {args.noise}, {args.envs} envs at once\n")
    print("| task | success | mean steps (successes) | steps/s | failed states (phase) |")
    print("|---|---|---|---|---|")
    total = [0, 0]
    for name, cfg, task_index in runs:
        r = run_task(cfg, task_index, states, args.envs, args.noise, args.seed)
        total[0] += r["successes"]
        total[1] += r["trials"]
        print(f"| {name} | {r['successes']}/{r['trials']} | {r['mean_steps']:.0f} | "
              f"{r['steps_per_s']:.0f} | {' '.join(r['failures']) or '-'} |", flush=True)
    if len(runs) > 1:
        print(f"| all | {total[0]}/{total[1]} ({100 * total[0] / total[1]:.0f}%) | | | |")


if __name__ == "__main__":
    main()
