"""Learning curves of token_ar served by vLLM against the torch backend, same seeds.

What it measures
    The chain of configs/synthetic_token_ar.yaml once: a tiny random Qwen2 (offline),
    scripted demonstrations, behaviour cloning (the warm start), then for each seed
    (--seeds) two GRPO runs from that checkpoint that differ only in
    ``inference.backend``: torch (run with .venv/bin/python) and vllm (run with
    .venv-vllm/bin/python). Each run evaluates deterministically every
    ``eval.every_updates`` updates on the held-out layouts (``eval/success``, 100 trials),
    so the curves compared are the evaluation rounds, plus the training
    ``env/success_once``. Printed: each run's evaluation rounds, per backend the mean over
    seeds of the last round, the seed-to-seed spread within each backend (run-to-run
    noise), the difference between the backends' means, and wall-clock and env steps/s per
    run. ``curves.png`` beside the runs. Runs one after another: nothing else should share
    the cores (the wall-clock is reported, not compared).

How to run
    .venv/bin/python benchmarks/bench_vllm_curve.py                  # ~45 min on 2 cores
    .venv/bin/python benchmarks/bench_vllm_curve.py --seeds 0 --updates 20   # smoke
A stage whose result exists is skipped (delete its folder to run it again). Figures go
to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learner.curves import plot_runs, read_run  # noqa: E402

CONFIG = "configs/synthetic_token_ar.yaml"
PYTHONS = {"torch": ROOT / ".venv/bin/python", "vllm": ROOT / ".venv-vllm/bin/python"}


def stage(python: Path, folder: Path, done: str, args: list[str]) -> float:
    """``launch.py`` with ``args`` and log folder ``folder`` unless ``folder/done`` exists;
    returns its wall-clock seconds (0 when skipped)."""
    if (folder / done).exists():
        print(f"== {folder.name}: done before, skipped", flush=True)
        return 0.0
    cmd = [str(python), str(ROOT / "launch.py"), "--config", str(ROOT / CONFIG), *args,
           f"run.log_dir={folder}"]
    print("== " + " ".join(cmd[1:]), flush=True)
    began = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0 or not (folder / done).exists():
        raise SystemExit(f"{folder.name} failed (exit {code}); see {folder}")
    return time.monotonic() - began


def rounds(folder: Path) -> list[tuple[int, float]]:
    """(policy version, success) of each evaluation round of a run."""
    out = []
    for line in (folder / "eval_rounds.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((int(r["policy_version"]), float(r["mean_success_rate"])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "vllm_curve")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--updates", type=int, default=200)
    args = p.parse_args(argv)
    root = args.root.resolve()
    for name, python in PYTHONS.items():
        if not python.exists():
            raise SystemExit(f"{python} is missing: run `make install vllm` first ({name})")
    lm = root / "lm"
    if not (lm / "config.json").exists():
        subprocess.check_call([str(PYTHONS["torch"]), "-m", "models.tiny_vla", "qwen2",
                               str(lm)], cwd=ROOT)
    common = [f"model.model_path={lm}"]
    stage(PYTHONS["torch"], root / "record", "record_results.json", ["--record", *common])
    stage(PYTHONS["torch"], root / "sft", "sft_summary.json",
          ["--sft", f"sft.datasets=[{root / 'record' / 'dataset'}]", *common])
    warm = [*common, f"model.checkpoint={root / 'sft' / 'checkpoint.pt'}"]
    runs, times = {}, {}
    for seed in args.seeds:
        for backend, python in PYTHONS.items():
            folder = root / f"rl_{backend}_seed{seed}"
            times[folder.name] = stage(python, folder, "learner_summary.json", [
                *warm, f"inference.backend={backend}", f"run.seed={seed}",
                f"run.total_updates={args.updates}"])
            runs[f"{backend} seed {seed}"] = folder
    print("\n| run | evaluation rounds (update: success) | wall-clock | env steps/s |")
    print("|---|---|---:|---:|")
    last = {backend: [] for backend in PYTHONS}
    for name, folder in runs.items():
        r = rounds(folder)
        last[name.split()[0]].append(r[-1][1])
        summary = json.loads((folder / "learner_summary.json").read_text())
        train = read_run(folder)["train"]
        seconds = float(train[-1][2]) if len(train) else float("nan")
        steps = float(train[-1][1]) if len(train) else float("nan")
        wall = times[folder.name] or seconds
        print(f"| {name} | {', '.join(f'{v}: {s:.2f}' for v, s in r)} | {wall:.0f} s | "
              f"{steps / max(seconds, 1e-9):.0f} |")
        assert summary["duplicates"] == 0, f"{folder}: duplicated episodes"
    print()
    for backend, values in last.items():
        spread = max(values) - min(values)
        print(f"{backend}: last round mean {statistics.mean(values):.3f} over seeds "
              f"{args.seeds}, seed-to-seed spread {spread:.3f}")
    diff = statistics.mean(last["vllm"]) - statistics.mean(last["torch"])
    print(f"vllm - torch: {diff:+.3f}")
    print(f"curves: {plot_runs(runs, root / 'curves.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
