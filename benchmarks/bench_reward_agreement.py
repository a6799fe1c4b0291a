"""Is the world model's reward the real one, on the episodes RL would train on?

    python benchmarks/bench_reward_agreement.py --config configs/robosuite_lift_world_model.yaml \\
        --checkpoint runs/lift_wm9/sft/checkpoint.pt --groups 16 \\
        --real env.kind=robosuite env.image_size=128 -- \\
        env.world_model.checkpoint=runs/lift_wm9/world_model/world_model.pt \\
        env.world_model.reset_data=[runs/lift_wm9/record/dataset]

GRPO in a world model learns from groups of the policy's sampled episodes, each scored
by the world model. Here G groups of N episodes (``--group-size``, the config's
``actor.group_size``) run closed loop in the world-model env as RL runs them (reset frames
0..G-1, sampled actions at ``inference.temperature``); then each episode's actions,
exactly as taken, are replayed open loop in the real env from the initial state its reset
frame was recorded from (HDF5 recordings keep it). The world model's verdict and the
real env's on the same actions give :func:`worldmodel.metrics.group_agreement`: success
rates, false successes, and the correlation between the advantages GRPO computes from
the world model and those the real env would give (0: RL in this world model follows a
signal unrelated to the real task); ``return_advantage_correlation`` is the same from
the world model's returns, which differ from its successes where the score is the
probability itself (``env.world_model.binary_score=false``). A replay is open loop: a
real policy would react to what it sees, so this measures the reward, not what the
policy would do in the real env.
Written to ``--out`` (JSON) and printed.

``--record DIR`` also writes every replay as a chunkrl recording (the real frames, every
camera of ``env.record_cameras``, and the simulator's verdicts, for the actions the policy
took in the world model): data for a world model to learn what those actions really do
(``world_model.init`` fine-tunes one on it). ``--first-frame F`` takes the reset frames
F..F+G-1, so that the groups recorded for training and those measured differ. With
``--record`` the replay's seconds include rendering and writing the recordings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="the policy's checkpoint.pt")
    p.add_argument("--groups", type=int, default=16, help="reset frames F..F+G-1, one group each")
    p.add_argument("--first-frame", type=int, default=0, help="F: the first reset frame")
    p.add_argument("--record", default=None, help="write the replays as recordings here")
    p.add_argument("--group-size", type=int, default=None, help="default: actor.group_size")
    p.add_argument("--real", nargs="+", default=["env.kind=robosuite", "env.image_size=128"],
                   help="the overrides that make the config's env the real one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE for both envs (after --)")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from actors.demos import make_demo_recorder
    from configs import load_config
    from envs import make_env
    from envs.world_model import make_world_model_env
    from worldmodel.closed_loop import closed_loop, policy_act, replay
    from worldmodel.data import resize
    from worldmodel.metrics import group_agreement

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    cfg = load_config(args.config, args.overrides)
    if cfg.env.kind != "world_model":
        raise SystemExit(f"env.kind={cfg.env.kind}: the config's env must be the world model")
    recording = [f"record.dataset_dir={args.record}"] if args.record else []
    real_cfg = load_config(args.config, [*args.overrides, *args.real, *recording])
    n = args.group_size or cfg.actor.group_size
    act = policy_act(cfg, args.checkpoint, False)
    began = time.monotonic()
    wm_env = make_world_model_env(cfg.env, args.groups * n, 1, cfg.model.action_dim,
                                  cfg.env.max_episode_steps, device="cpu")
    first_frame = args.first_frame
    starts = wm_env.starts[first_frame:first_frame + args.groups]
    if len(starts) < args.groups or any(s.init_state_id < 0 for s in starts):
        raise SystemExit(f"env.world_model.reset_data holds {len(wm_env.starts)} episodes, "
                         f"some without their initial state: give >= "
                         f"{first_frame + args.groups} HDF5 recordings made by chunkrl")
    frames = [g for g in range(args.groups) for _ in range(n)]
    episodes = closed_loop(wm_env, act, [first_frame + g for g in frames])
    wm_s = time.monotonic() - began
    real_env = make_env(real_cfg.env, min(16, len(episodes)), 1, cfg.model.action_dim)
    # The mapping reset frame -> initial state, checked: the real env's first frame there
    # against the world model's reset frame (mean grey levels, both resized alike).
    real_env.reset_group(0, starts[0].init_state_id)
    first = resize(real_env.observe(np.array([0])).main_images, starts[0].frame.shape[0])[0]
    frame_gap = float(np.abs(first.astype(float) - starts[0].frame[..., :3]).mean())
    hook = writer = None
    if args.record:
        hook, writer = make_demo_recorder(real_cfg, real_env,
                                          f"world_model_replay:{args.checkpoint}")
    began = time.monotonic()
    won = replay(real_env, [starts[g].init_state_id for g in frames],
                 [ep.actions for ep in episodes], hook)
    real_s = time.monotonic() - began
    if writer is not None:
        writer.close()
    wm_won = np.array([ep.first_success is not None for ep in episodes])
    returns = np.array([ep.ret for ep in episodes]).reshape(args.groups, n)
    result = {"checkpoint": args.checkpoint, "world_model": cfg.env.world_model.checkpoint,
              "groups": args.groups, "first_frame": first_frame, "group_size": n,
              "recorded": writer.written if writer else 0, "temperature": cfg.inference.temperature,
              "reset_frame_gap_grey_levels": frame_gap, "wm_seconds": wm_s,
              "real_seconds": real_s,
              **group_agreement(wm_won.reshape(args.groups, n), won.reshape(args.groups, n)),
              "wm_mean_return": float(returns.mean()),
              "return_advantage_correlation": group_agreement(
                  returns, won.reshape(args.groups, n))["advantage_correlation"]}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
