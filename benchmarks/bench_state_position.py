"""Where the simulator-drawn world model puts the gripper after one chunk, against copying
the last frame: the issue's position criterion for ``env.world_model.frames: simulator``;
and whose false successes its held-out episodes show: the learned judge's or the dynamics'.

    R=runs/lift_wm   # as scripts/reproduce.py lift_wm leaves it
    python benchmarks/bench_state_position.py --config configs/robosuite_lift_world_model.yaml \\
        --out pos.json -- env.world_model.checkpoint=$R/world_model/world_model.pt \\
        "world_model.datasets=[$R/record/dataset,$R/record_policy/dataset]" \\
        world_model.position_dims=3

With ``frames: simulator`` the frame the policy sees is the real renderer's drawing of
the state model's predicted state, so the gripper position that frame shows is the end
effector's position by forward kinematics of that state, exactly: no probe needed (a
probe would add its own error to both sides). For every step t of the state model's
held-out episodes (its own split: ``worldmodel.stages.state_split``, the same datasets,
``val_fraction`` and ``run.seed`` as its training) with N = ``actor.actions_per_chunk``
recorded actions after it, the model predicts the N states from the recorded state
s_t (an ensemble: its members' mean, what the env draws); the simulator
(:class:`envs.sim_view.SimulatorView`, no physics step) reads the end effector's
position of each, compared with the recorded position after each action (the
recordings' policy state, its first ``world_model.position_dims`` entries), as
:func:`envs.sim_view.chunk_position_errors` says; mean errors in metres over every (t, k),
and their ratio (the issue's target: at most half of copy-last's).

Then each held-out episode open loop from its first state with its recorded actions
(:func:`envs.sim_view.open_loop_verdicts`): the share of real failures called successes
and of real successes found, by the state model's learned judge (at
``env.world_model.success_threshold``) and by the simulator's own success check read off
the same predicted states. Where the simulator's check on predicted states makes few of
the learned judge's false successes, the judge errs; where it makes them too, the
predicted dynamics do. ``--verdicts DIR ...`` takes every episode of those recordings
instead of the held-out ones: on the replays of a policy's world-model episodes
(``bench_reward_agreement.py --record``, ``reproduce.py``'s ``replay<r>``) the open loop
is the world-model episode itself, so the learned verdict is the one RL was paid.
Printed and written to ``--out``.
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
    p.add_argument("--out", default=None, help="JSON to write")
    p.add_argument("--verdicts", nargs="+", default=None, metavar="DIR",
                   help="judge every episode of these recordings (default: the held-out ones)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE (after --)")
    args = p.parse_args(argv)
    from configs import load_config
    from envs.sim_view import chunk_position_errors, open_loop_verdicts, scene_view
    from worldmodel.models import WorldModel
    from worldmodel.stages import state_split, verdict_rates
    from worldmodel.state_model import load_state_episodes

    cfg = load_config(args.config, args.overrides)
    model = WorldModel.load(cfg.env.world_model.checkpoint)
    if model.state_model is None:
        raise SystemExit(f"{cfg.env.world_model.checkpoint} has no state model: train one "
                         "with world_model.state.steps > 0")
    if cfg.world_model.position_dims <= 0:
        raise SystemExit("world_model.position_dims=0: set it to the position entries of the "
                         "policy's state (robosuite: world_model.position_dims=3)")
    _, val, _ = state_split(cfg, proprio=True)
    view = scene_view(cfg.env, cfg.model.action_dim, model.state_model.state_dim)
    n, dims = cfg.actions_per_chunk, cfg.world_model.position_dims
    began = time.monotonic()
    errors = chunk_position_errors(view, model.state_model, val, n, dims)
    judged = load_state_episodes(args.verdicts)[0] if args.verdicts else val
    verdicts = open_loop_verdicts(view, model.state_model, judged,
                                  cfg.env.world_model.success_threshold)
    view.close()
    won = verdicts["real"]
    judges = {k: verdict_rates(v.astype(float), won, 0.5)  # calls of 0 or 1
              for k, v in verdicts.items() if k != "real"}
    m = {k: float(v.mean()) for k, v in errors.items()}
    out = {"world_model": cfg.env.world_model.checkpoint, "episodes": len(val),
           "targets": len(errors["predicted"]), "chunk": n,
           "position_error": m["predicted"], "copy_last_position_error": m["copy_last"],
           "position_error_ratio": m["predicted"] / max(m["copy_last"], 1e-12),
           "reading_error": m["reading"], "judged": args.verdicts or "held out",
           "judged_episodes": len(judged), "real_successes": int(won.sum()),
           "judges": judges, "seconds": time.monotonic() - began}
    print(f"held-out end-effector position after each of {n} predicted steps, {out['targets']} "
          f"targets of {len(val)} episodes: predicted {m['predicted'] * 1000:.1f} mm, copy-last "
          f"{m['copy_last'] * 1000:.1f} mm (ratio {out['position_error_ratio']:.2f}); the "
          f"simulator's reading of recorded states {m['reading'] * 1000:.1f} mm")
    for k, j in judges.items():
        print(f"judge {k}: real failures called successes {j['success_on_real_failures']}, "
              f"real successes found {j['success_on_real_successes']} "
              f"({int(won.sum())} of {len(won)} real successes)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
