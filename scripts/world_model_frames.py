"""What does a world model call success? A policy's episodes closed loop in the
world-model env, its success rate there, and the frames before each first success.

    python scripts/world_model_frames.py --config configs/robosuite_lift_world_model.yaml \\
        --checkpoint runs/lift_wm3/sft/checkpoint.pt --out frames.png \\
        env.world_model.checkpoint=runs/lift_wm3/world_model/world_model.pt \\
        env.world_model.reset_data=[runs/lift_wm3/record/dataset]

``--episodes`` episodes, one per reset frame 0..N-1, the policy's deterministic actions
at ``inference.temperature``, on the CPU in this process. The PNG
(:func:`worldmodel.closed_loop.success_grid`, scaled 3x) has one row per successful
episode: the frames 16, 8 and 2 steps before its first success, the success frame, the
reset frame (each with every camera of the world model side by side, main first). Set
``env.world_model.*`` overrides as for RL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="the policy's checkpoint.pt")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--episodes", type=int, default=48)
    p.add_argument("overrides", nargs="*", help="KEY=VALUE")
    args = p.parse_args(argv)
    import torch
    from PIL import Image

    from configs import load_config
    from envs.world_model import make_world_model_env
    from worldmodel.closed_loop import closed_loop, policy_act, success_grid

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    if cfg.env.kind != "world_model":
        raise SystemExit(f"env.kind={cfg.env.kind}: this looks into a world-model env")
    env = make_world_model_env(cfg.env, args.episodes, 1, cfg.model.action_dim,
                               cfg.env.max_episode_steps, device="cpu")
    act = policy_act(cfg, args.checkpoint, True)
    episodes = closed_loop(env, act, list(range(args.episodes)))
    won = sum(ep.first_success is not None for ep in episodes)
    print(f"{won} of {len(episodes)} episodes succeed in the world model "
          f"({won / len(episodes):.0%})")
    grid = success_grid(episodes)
    if grid is not None:
        Image.fromarray(grid.repeat(3, 0).repeat(3, 1)).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
