"""Env steps/s of a world-model env against the real simulator it stands for, same batch.

What it measures
    One process, one thread (an actor's core: ``run.torch_threads``), E envs in groups as
    the config's actor has them, chunks of N actions (the config's). Each side resets
    every group, then steps whole episodes chunk by chunk as the actor does (one
    ``step_chunk`` per chunk for the live envs, then ``observe``), random actions in
    [-1, 1]. Sides alternate order over ``--repeats`` rounds; medians are reported with
    the world model's speed-up over the simulator.

    real   the config's env with ``--real`` overrides (e.g. ``env.kind=robosuite
           env.image_size=128``): simulator steps and camera renders.
    wm     ``env.kind=world_model`` of the config: the trained model of
           ``env.world_model.checkpoint`` when it exists, else an untrained one of the
           ``world_model`` section's sizes (the same convolutions: the speed does not
           depend on the weights), reset from ``env.world_model.reset_data`` when it
           exists, else from random frames.

How to run
    .venv/bin/python benchmarks/bench_world_model_speed.py \\
        configs/robosuite_lift_world_model.yaml --real env.kind=robosuite env.image_size=128
    (``--set world_model.chunk=1``: a one-frame-per-call model of the same widths)
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import load_config  # noqa: E402
from envs import make_env, max_episode_steps  # noqa: E402


def world_model_env(cfg, num_envs: int, group_size: int):
    """The config's world-model env, or one of its sizes with untrained weights / random
    reset frames where the files are missing; and a note of which."""
    from envs.world_model import WorldModelVectorEnv, make_world_model_env
    from worldmodel.data import ResetFrame, reset_frames
    from worldmodel.models import from_config

    wm, steps = cfg.env.world_model, max_episode_steps(cfg.env)
    if Path(wm.checkpoint).is_file():
        return (make_world_model_env(cfg.env, num_envs, group_size, cfg.model.action_dim,
                                     steps, "cpu"), f"trained: {wm.checkpoint}")
    size = cfg.world_model.image_size
    model = from_config(cfg.world_model, cfg.model.action_dim, -np.ones(cfg.model.action_dim),
                        np.ones(cfg.model.action_dim))
    if all(Path(p).exists() for p in wm.reset_data) and wm.reset_data:
        starts = reset_frames(wm.reset_data, size, cameras=model.cameras)
        note = "untrained, recorded reset frames"
    else:
        rng = np.random.default_rng(0)
        starts = [ResetFrame(rng.integers(0, 256, (size, size, 3 * len(model.cameras)),
                                          np.uint8), "lift the cube")]
        note = "untrained, random reset frames"
    return (WorldModelVectorEnv(num_envs, group_size, model, starts, steps, cfg.env.state_dim,
                                cfg.model.action_dim), note)


def episodes_per_second(env, num_groups: int, group_size: int, chunk: int, steps: int,
                        episodes: int, rng: np.random.Generator) -> float:
    """Env steps/s over ``episodes`` rounds of: reset every group, then chunks until every
    env's episode has ended (or ``steps`` steps)."""
    taken, began = 0, time.perf_counter()
    for round_ in range(episodes):
        for g in range(num_groups):
            env.reset_group(g, 500 + round_ * num_groups + g)  # any state: not evaluated
        live = np.arange(num_groups * group_size)
        for _ in range(-(-steps // chunk)):
            if not len(live):
                break
            actions = rng.uniform(-1, 1, (len(live), chunk, env.action_dim)).astype(np.float32)
            ended = np.zeros(len(live), bool)
            for res in env.step_chunk(live, actions):
                taken += int((~ended).sum())
                ended |= res.ended()
            live = live[~ended]
            if len(live):  # what the policy reads next
                env.observe(live)
    return taken / (time.perf_counter() - began)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--real", nargs="*", default=[], help="overrides that make the real env")
    p.add_argument("--set", nargs="*", default=[], dest="overrides",
                   help="overrides for both sides (e.g. world_model.chunk=1)")
    p.add_argument("--episodes", type=int, default=2, help="episodes per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (an actor's)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    real_cfg = load_config(args.config, [*args.overrides, *args.real])
    e, g, n = cfg.actor.envs_per_actor, cfg.actor.group_size, cfg.actions_per_chunk
    steps = max_episode_steps(cfg.env)
    envs = {"real": (make_env(real_cfg.env, e, g, cfg.model.action_dim), real_cfg.env.kind),
            "wm": world_model_env(cfg, e, g)}
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {"real": [], "wm": []}
    for side in envs:  # one untimed episode each: first renders, lazy allocations
        episodes_per_second(envs[side][0], e // g, g, n, steps, 1, rng)
    for r in range(args.repeats):
        for side in (("real", "wm") if r % 2 == 0 else ("wm", "real")):
            rates[side].append(episodes_per_second(envs[side][0], e // g, g, n, steps,
                                                   args.episodes, rng))
            print(f"round {r}: {side} {rates[side][-1]:.0f} env steps/s", flush=True)
    for env, _ in envs.values():
        env.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{e} envs in groups of {g}, chunks of {n}, episodes of {steps} steps, "
          f"{args.threads} thread(s); medians of {args.repeats} rounds of {args.episodes} "
          "episodes\n")
    print("| env | env steps/s |\n|---|---:|")
    print(f"| real ({envs['real'][1]}, {real_cfg.env.image_size}px) | {med['real']:.0f} |")
    drawn = cfg.env.world_model.frames
    size = cfg.env.image_size if drawn == "simulator" else cfg.world_model.image_size
    print(f"| world model ({envs['wm'][1]}, frames: {drawn}, {size}px) | {med['wm']:.0f} |")
    print(f"\nworld model / real: {med['wm'] / med['real']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": rates, "median": med,
                                               "envs": e, "group": g, "chunk": n}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
