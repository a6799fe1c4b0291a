"""Does a policy act on the world model's frames as it acts on the real ones?

    python benchmarks/bench_policy_on_generated.py \\
        --config configs/robosuite_lift_world_model.yaml \\
        --checkpoint runs/lift_wm9/sft/checkpoint.pt \\
        --world-model runs/lift_wm9/world_model_tuned/world_model.pt \\
        --data runs/lift_wm9/record_policy/dataset --episodes 40 --out OUT.json

For each recorded episode (its frames in the world model's views and size, its actions),
the policy's deterministic first action is computed on three versions of every frame t:
the **real** frame; the frame the world model generates **one step** from the real frames
before it and action t-1 (how a generated frame looks, before any drift); and the frame
it generates **open loop** from the first real frame and every recorded action since (what
the world-model env shows: drift included). Per stretch of steps: the mean distance from
the action on the real frame, in the recorded actions' standard deviations, arm
dimensions and gripper apart, and how often the gripper's command (open or close, its
sign) is the same; for scale, the distance between the actions on the real frames t-1
and t. The actions are the recorded ones throughout, so the frames differ
only by the world model: a policy that acts alike on the real and one-step frames but not
on the open-loop ones is misled by drift; one that acts differently already on one-step
frames, by how generated frames look. Written to ``--out`` (JSON) and printed.

With ``--frames state`` the frames are the world model's decoder's
(:mod:`worldmodel.decoder`, ``env.world_model.frames: state``): the **one-step** frame is
drawn from the simulator state the recording kept for step t (how a drawn frame looks),
the **open-loop** one from the state the state model predicts from the first recorded
state and every action since (what the env then shows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRETCHES = ((1, 8), (9, 24), (25, 48), (49, 10_000))  # steps t, inclusive


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="the policy's checkpoint.pt")
    p.add_argument("--world-model", required=True, help="a world_model.pt")
    p.add_argument("--data", nargs="+", required=True, help="recordings (HDF5 files or folders)")
    p.add_argument("--episodes", type=int, default=40, help="the first E recordings")
    p.add_argument("--frames", choices=("generator", "state"), default="generator",
                   help="the frame predictor's frames, or the decoder's from states")
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE for the config (after --)")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from configs import load_config
    from envs import image_orientation
    from envs.base import EnvObs
    from worldmodel.closed_loop import policy_act
    from worldmodel.data import load_episodes
    from worldmodel.evaluate import rollout
    from worldmodel.models import WorldModel, to_images, to_model_frames

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    model = WorldModel.load(args.world_model).eval()
    episodes, report = load_episodes(args.data, model.image_size, image_orientation(cfg.env),
                                     model.cameras)
    episodes = episodes[:args.episodes]
    if not episodes:
        raise SystemExit(f"no episodes in {args.data} ({report.summary()})")
    if args.frames == "state" and (model.decoder is None or model.state_model is None):
        raise SystemExit(f"{args.world_model} has no state model and decoder "
                         "(world_model.state.steps, world_model.decoder.steps)")
    if args.frames == "generator" and model.chunk != 1:
        raise SystemExit("a world model generating more than one frame per call: one-step "
                         "frames need world_model.chunk=1")
    act = policy_act(cfg, args.checkpoint, True)
    scale = np.concatenate([e.actions for e in episodes]).std(0) + 1e-6
    k = model.condition_frames
    rows = []  # (t, arm |d| one-step, open loop, gripper same one-step, open loop, arm |d|
    #             between the real frames t-1 and t)
    for ep in episodes:
        n = len(ep)
        if n < 2:
            continue  # no frame after the first to compare
        real = ep.frames[:n]  # frame t: before action t (t = 0..L-1)
        if args.frames == "state":
            one_step, open_loop = drawn(model, real[:1], ep)
        else:
            with torch.no_grad():
                hist = np.stack([real[np.clip(np.arange(t - k, t), 0, None)]
                                 for t in range(1, n)])
                acts = model.normalise(torch.from_numpy(ep.actions[:n - 1, None]))
                one_step = np.concatenate([real[:1], to_images(
                    model.generator.generate(to_model_frames(hist), acts))[:, 0]])
            open_loop = np.concatenate([real[:1], rollout(
                model, real[:1], ep.actions[None, :n - 1], "cpu")[0]])
        out = {}
        for name, frames in (("real", real), ("one_step", one_step), ("open_loop", open_loop)):
            obs = EnvObs(np.ascontiguousarray(frames[..., :3]),
                         np.zeros((n, cfg.env.state_dim), np.float32), [ep.instruction] * n)
            out[name] = act(obs)[:, 0]
        for t in range(1, n):
            d1 = np.abs(out["one_step"][t] - out["real"][t]) / scale
            d2 = np.abs(out["open_loop"][t] - out["real"][t]) / scale
            same1 = np.sign(out["one_step"][t, -1]) == np.sign(out["real"][t, -1])
            same2 = np.sign(out["open_loop"][t, -1]) == np.sign(out["real"][t, -1])
            d0 = np.abs(out["real"][t - 1] - out["real"][t]) / scale  # a scale: one step on
            rows.append((t, d1[:-1].mean(), d2[:-1].mean(), same1, same2, d0[:-1].mean()))
    if not rows:
        raise SystemExit("every episode is one step long: nothing generated to compare")
    table = np.array(rows, float)
    result = {"checkpoint": args.checkpoint, "world_model": args.world_model,
              "frames": args.frames, "episodes": len(episodes), "stretches": []}
    print(f"{len(episodes)} episodes; the policy's first action on generated frames against "
          "the real frame's (arm: mean |difference| in the recorded actions' std)")
    print("| steps | frames | arm, one-step | arm, open loop | gripper same, one-step | "
          "gripper same, open loop | arm, real frame t-1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for lo, hi in STRETCHES:
        part = table[(table[:, 0] >= lo) & (table[:, 0] <= hi)]
        if not len(part):
            continue
        row = {"steps": [lo, hi], "frames": len(part),
               "arm_one_step": float(part[:, 1].mean()), "arm_open_loop": float(part[:, 2].mean()),
               "gripper_same_one_step": float(part[:, 3].mean()),
               "gripper_same_open_loop": float(part[:, 4].mean()),
               "arm_real_step_before": float(part[:, 5].mean())}
        result["stretches"].append(row)
        print(f"| {lo}-{min(hi, int(table[:, 0].max()))} | {len(part)} | "
              f"{row['arm_one_step']:.2f} | {row['arm_open_loop']:.2f} | "
              f"{row['gripper_same_one_step']:.0%} | {row['gripper_same_open_loop']:.0%} | "
              f"{row['arm_real_step_before']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def drawn(model, first, ep):
    """The decoder's frames of an episode's frames 1..L-1 (uint8), after the real first
    frame ``first`` [1,H,W,C]: from the recorded states, and from the state model's
    open-loop prediction of them."""
    import numpy as np
    import torch

    from worldmodel.ensemble import shown_rollout
    from worldmodel.models import to_images

    if ep.sim_states is None:
        raise SystemExit("--frames state needs recordings with simulator states")
    n = len(ep.sim_states)
    with torch.no_grad():
        states = torch.from_numpy(ep.sim_states)
        predicted = shown_rollout(model.state_model, states[:1],
                                  torch.from_numpy(ep.actions[None, :n - 1]))[0]
        return (np.concatenate([first, to_images(model.decoder.draw(states[1:]))]),
                np.concatenate([first, to_images(model.decoder.draw(predicted))]))


if __name__ == "__main__":
    main()
