"""Learning curves as a PNG: success against env steps and against wall-clock time.

Read from a training run's own files: TensorBoard's ``env/success_once`` and
``perf/total_env_steps`` (one point per update) and ``eval_rounds.jsonl`` (the evaluation
rounds). The learner writes ``log_dir/curves.png`` when it stops; to draw or compare runs::

    python -m learner.curves runs/lift_grpo [runs/lift_scratch ...] --out curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from learner.eval_rounds import ROUNDS_FILE


def read_run(log_dir: Path) -> dict:
    """Arrays of a run: ``train`` (version, env steps, seconds, success_once) and
    ``eval`` (version, env steps, seconds, success), seconds from the run's start."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    success = acc.Scalars("env/success_once") if "env/success_once" in tags else []
    steps = {e.step: e.value for e in acc.Scalars("perf/total_env_steps")} \
        if "perf/total_env_steps" in tags else {}
    rounds = []
    path = Path(log_dir) / ROUNDS_FILE
    if path.exists():
        rounds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    starts = [e.wall_time for e in success[:1]] + [r["ordered_at"] for r in rounds[:1]]
    t0 = min(starts) if starts else 0.0
    train = np.array([(e.step, steps.get(e.step, np.nan), e.wall_time - t0, e.value)
                      for e in success]).reshape(-1, 4)
    evals = np.array([(r["policy_version"], r["env_steps"], r["ordered_at"] - t0,
                       r["mean_success_rate"]) for r in rounds]).reshape(-1, 4)
    return {"train": train, "eval": evals}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (fewer at the start)."""
    if len(values) == 0 or window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_runs(runs: dict[str, Path], out: Path, smooth_window: int = 20) -> Path:
    """One figure, two panels (env steps, minutes), every run's training success (a
    smoothed line) and evaluation rounds (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for k, (label, log_dir) in enumerate(runs.items()):
        data, colour = read_run(log_dir), f"C{k}"
        for ax, col, scale in ((axes[0], 1, 1.0), (axes[1], 2, 1 / 60)):
            tr, ev = data["train"], data["eval"]
            if len(tr):
                ax.plot(tr[:, col] * scale, smooth(tr[:, 3], smooth_window), colour,
                        alpha=0.6, label=f"{label}: training success_once")
            if len(ev):
                ax.plot(ev[:, col] * scale, ev[:, 3], colour, marker="o", linestyle="--",
                        label=f"{label}: evaluation (deterministic)")
    axes[0].set_xlabel("env steps (training episodes)")
    axes[1].set_xlabel("wall-clock minutes")
    axes[0].set_ylabel("success rate")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    """The command line: plot the runs' success curves into a PNG; returns 0."""
    p = argparse.ArgumentParser(description="Plot success against env steps and time.")
    p.add_argument("runs", nargs="+", help="training run folders (run.log_dir)")
    p.add_argument("--out", default=None, help="PNG file (default: <first run>/curves.png)")
    p.add_argument("--smooth", type=int, default=20, help="trailing mean over n updates")
    args = p.parse_args(argv)
    runs = {Path(r).name: Path(r) for r in args.runs}
    out = Path(args.out) if args.out else Path(args.runs[0]) / "curves.png"
    print(plot_runs(runs, out, args.smooth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
