"""How strict should the world model's success rule be? Its verdicts on held-out
episodes at several success thresholds, on the real frames and on frames it generates.

    python benchmarks/bench_success_threshold.py --config configs/robosuite_lift_world_model.yaml \\
        --world-model runs/lift_wm3/world_model/world_model.pt \\
        "world_model.datasets=[runs/lift_wm3/record/dataset,runs/lift_wm3/record_policy/dataset]" \\
        --thresholds 0.5 0.9 0.97 0.99

The held-out episodes are the ones the world model's training held out: the config (with
the overrides) and ``run.seed`` it was trained with give the same split
(:func:`worldmodel.train.split_episodes`). Each is replayed open loop from its first
frame with its recorded actions (:func:`worldmodel.evaluate.imagine`); an episode is a
world-model success when some frame's success probability reaches the threshold (the
env's rule, :func:`envs.world_model.frame_success`). The table has, per threshold, the
share of the episodes that really failed and of those that really succeeded called
successes, judged on their real frames (the success model alone) and on the generated
ones (what RL sees). No timing: a handful of seconds of scoring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def verdicts(model, val: list, thresholds: list[float], frames: int = 1) -> list[dict]:
    """One row per threshold: the success rates on real failures and real successes, on
    real and on generated frames (each frame scored once; success held ``frames``
    frames)."""
    from worldmodel.evaluate import imagine, outcome_rates, peak_scores

    real_peaks = peak_scores(model, val, "cpu", frames)
    generated_peaks = peak_scores(model, imagine(model, val, "cpu"), "cpu", frames)
    rows = []
    for t in thresholds:
        real = outcome_rates(real_peaks, val, t)
        gen = outcome_rates(generated_peaks, val, t)
        rows.append({"threshold": t,
                     "failures_real": real["wm_success_on_real_failures"],
                     "failures_generated": gen["wm_success_on_real_failures"],
                     "successes_real": real["wm_success_on_real_successes"],
                     "successes_generated": gen["wm_success_on_real_successes"]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the config the world model trained with")
    p.add_argument("--world-model", required=True, help="its world_model.pt")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.9, 0.97, 0.99],
                   help="after the overrides (it takes every value that follows)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, as training had them")
    args = p.parse_args(argv)
    import torch

    from configs import load_config
    from worldmodel.models import WorldModel
    from worldmodel.train import split_episodes

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    _, val, _ = split_episodes(cfg, np.random.default_rng(cfg.run.seed))
    failed = sum(not e.labels.any() for e in val)
    rows = verdicts(WorldModel.load(args.world_model), val, args.thresholds,
                    cfg.env.world_model.success_frames)
    print(f"{len(val)} held-out episodes: {failed} real failures, {len(val) - failed} "
          "real successes\n")
    print("| threshold | real failures called successes, real frames | generated frames | "
          "real successes called successes, real frames | generated frames |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['threshold']} | {r['failures_real']:.0%} | {r['failures_generated']:.0%}"
              f" | {r['successes_real']:.0%} | {r['successes_generated']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
