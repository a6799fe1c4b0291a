"""One command per experiment: record -> SFT -> eval -> RL -> eval, and the table.

    python scripts/reproduce.py synthetic        # or: lift, libero_spatial, synthetic_wm
    python scripts/reproduce.py lift --ppo       # PPO instead of GRPO for the RL stage
    python scripts/reproduce.py synthetic --scratch   # also RL from scratch, for comparison
    python scripts/reproduce.py lift --sampled   # also evaluate with sampled actions
    python scripts/reproduce.py lift_wm --more-trials  # SFT and RL also on 200 more states
    python scripts/reproduce.py libero_spatial --stop-after eval_sft   # the first stages only

Each stage is one ``launch.py`` run of the experiment's config with its own log folder
under ``runs/<experiment>/`` (``record``, ``sft``, ``eval_sft``, ``rl``, ``eval_rl``,
``scratch``). A stage whose result is already there is skipped (delete its folder to run
it again), so an interrupted chain continues where it stopped. At the end the before/after
table (evaluation of the SFT checkpoint, then of the RL one: the same initial states,
deterministic) is printed and written to ``runs/<experiment>/results.md`` with each
stage's wall-clock time, and ``curves.png`` (success against env steps and time) beside it.
Extra ``key=value`` arguments go to every stage.

A world-model experiment (``synthetic_wm``, ``lift_wm``) trains its RL stage inside a
learned simulator: after the SFT evaluation it records the SFT policy in the real env
(``record_policy``, with action noise: failures as well as successes), trains the world
model on both recordings (``world_model``), runs GRPO in it (``rl``, reset from the expert
recording's first frames) and evaluates the result in the real env. Its config's env is the world
model; the stages in the real env add the experiment's ``real_env`` overrides, and the
recordings its ``record_env`` (Lift: success held 8 steps). With ``--wm-rounds N`` it goes
on for N-1 more rounds, each: record what the latest RL policy does, train the world model
again on every recording so far (``world_model<r>``), continue RL in it from the latest
policy (``rl<r>``) and evaluate that in the real env (``eval_rl<r>``). What a round records
is the experiment's ``round_data``: the policy acting in the real env (``record_rl<r>``,
synthetic_wm: 100 episodes per task from states no other stage used), or the actions of
its own world-model episodes replayed in the real env (``replay<r>``, lift_wm: 24 groups,
with the agreement of the two verdicts in ``replay<r>/agreement.json``). The policy still
learns only in the world model; the real env only records data for it.

``--more-trials`` evaluates the SFT and the last RL checkpoint again on states no stage
starts from (``eval_sft_more``, ``eval_rl_more``; lift_wm: 200 from state 700) and adds
their table and the two evaluations pooled: 100 trials measure a success rate to about
+-5 points, less than the differences between recipes (RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learner.curves import plot_runs, read_run  # noqa: E402


@dataclass(frozen=True)
class Experiment:
    """The config every stage of an experiment runs; a world-model experiment's stages
    in the real env add ``real_env``, and its recording stages ``record_env`` as well.
    ``round_data`` is what a world-model round records for the world model: ``record``
    (the latest RL policy acting in the real env, with noise) or ``replay`` (the actions
    of its own world-model episodes replayed in the real env: what RL was paid for
    there, and what really happened). ``more_trials``: the first state and number of
    ``--more-trials``' evaluations, states no stage of the chain starts from (the expert's
    recording 100-299, the SFT policy's 400-599, record rounds 600-999; a world-model
    experiment's RL resets from the expert recording's frames)."""

    config: str
    real_env: tuple[str, ...] = ()
    record_env: tuple[str, ...] = ()
    round_data: Literal["record", "replay"] = "record"
    more_trials: tuple[int, int] = (300, 100)

    @property
    def world_model(self) -> bool:
        """The RL stage runs in a world model trained by the chain."""
        return bool(self.real_env)

    @property
    def spare_states(self) -> tuple[str, ...]:
        """Overrides of an evaluation from ``more_trials``' first state (past the held-out
        evaluation states, so their guard is off); the caller sets the trials."""
        return ("env.held_out_eval_states=false", f"eval.first_state={self.more_trials[0]}")


EXPERIMENTS = {
    "synthetic": Experiment("configs/synthetic_nogoal.yaml"),
    "lift": Experiment("configs/robosuite_lift.yaml"),
    "libero_spatial": Experiment("configs/libero_spatial_sft.yaml"),
    "synthetic_wm": Experiment("configs/synthetic_world_model.yaml",
                               ("env.kind=synthetic", "env.image_size=224")),
    "lift_wm": Experiment("configs/robosuite_lift_world_model.yaml", ("env.kind=robosuite",),
                          # a success shown held: positives for the state model's judge
                          ("env.success_hold_steps=8",),
                          # what closed the state judge's false successes (RESULTS.md)
                          round_data="replay",
                          # replay rounds record from the expert recording's states
                          more_trials=(700, 200)),
}
STAGES = ("record", "sft", "eval_sft", "record_policy", "world_model", "rl")
POLICY_RECORDING = ("record.source=policy", "record.first_state=400",
                    "record.action_noise=0.3")  # states the expert's recording never used
RL_RECORDING = ("record.source=policy", "record.episodes_per_task=100",
                "record.action_noise=0.3")  # round r: states 600 + 100 (r - 2) onwards
MAX_WM_ROUNDS = 5  # rounds 2..5 fill states 600..999 (INIT_STRIDE 1000 per task)
REPLAY_GROUPS = 24  # round r replays groups from reset frames 24 (r - 2) onwards
AGREEMENT = ROOT / "benchmarks" / "bench_reward_agreement.py"
EVALUATE = ("--eval", "actor.deterministic=true")  # the before/after table's evaluations
TIMES = "stage_times.json"  # in the experiment folder: kept across runs of a chain
PPO = ("learner.algorithm=ppo", "model.value_head=true", "learner.ppo.critic_warmup_updates=5",
       "learner.update_epochs=2", "learner.global_batch_size=64")


def stage(name: str, root: Path, config: str, args: list[str], done_file: str,
          times: dict) -> Path:
    """Run ``launch.py --config config *args`` with its log folder ``root/name``, unless
    ``done_file`` is there already; returns the folder."""
    return run_stage(name, root, [str(ROOT / "launch.py"), "--config", str(ROOT / config),
                                  *args, f"run.log_dir={root / name}"], done_file, times)


def run_stage(name: str, root: Path, cmd: list[str], done_file: str, times: dict) -> Path:
    """Run ``python *cmd``, which writes ``root/name/done_file``, unless that is there
    already; its wall-clock time goes into ``times``; returns the folder."""
    folder = root / name
    if (folder / done_file).exists():
        print(f"== {name}: done before ({folder / done_file}), skipped", flush=True)
        return folder
    cmd = [sys.executable, *cmd]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    began = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    times[name] = time.monotonic() - began
    (root / TIMES).write_text(json.dumps(times))
    if code != 0 or not (folder / done_file).exists():
        raise SystemExit(f"stage {name} failed (exit {code}); see {folder}")
    return folder


def table(title: str, before: dict, after: dict) -> str:
    """Markdown: per task, success before (SFT) and after (RL), and the change."""
    rows = [f"{title}:", "", "| task | instruction | SFT | RL | change |",
            "|---:|---|---:|---:|---:|"]
    after_tasks = {t["task_id"]: t for t in after["tasks"]}
    for t in before["tasks"]:
        a = after_tasks.get(t["task_id"], {}).get("success_rate", float("nan"))
        rows.append(f"| {t['task_id']} | {t['instruction']} | {100 * t['success_rate']:.1f}% "
                    f"| {100 * a:.1f}% | {100 * (a - t['success_rate']):+.1f} |")
    b, a = before["mean_success_rate"], after["mean_success_rate"]
    rows.append(f"| **mean** | ({before['episodes']} / {after['episodes']} episodes) | "
                f"**{100 * b:.1f}%** | **{100 * a:.1f}%** | **{100 * (a - b):+.1f}** |")
    return "\n".join(rows) + "\n\n"


def pooled(a: dict, b: dict) -> dict:
    """Two evaluations of one policy on different states as one: each task's trials and
    successes summed (the results' layout, :func:`results`)."""
    tasks = {t["task_id"]: dict(t) for t in a["tasks"]}
    for t in b["tasks"]:
        mine = tasks[t["task_id"]]
        trials = mine["trials"] + t["trials"]
        mine["success_rate"] = (mine["success_rate"] * mine["trials"]
                                + t["success_rate"] * t["trials"]) / trials
        mine["trials"] = trials
    return {"tasks": list(tasks.values()), "episodes": a["episodes"] + b["episodes"],
            "mean_success_rate": sum(t["success_rate"] for t in tasks.values()) / len(tasks)}


def stage_times(times: dict) -> str:
    rows = ["| stage | wall-clock |", "|---|---:|"]
    return "\n".join(rows + [f"| {k} | {v / 60:.1f} min ({v:.0f} s) |"
                             for k, v in times.items()]) + "\n"


def results(folder: Path) -> dict:
    return json.loads((folder / "eval" / "eval_results.json").read_text())


def round_summary(r: int, trained: Path, after: Path, updates: int = 10) -> str:
    """Round ``r``'s real-env success, and the success its RL stage saw in the world
    model (``env/success_once``), the mean of its first and of its last ``updates``
    updates (one update's is a group sample: too noisy to compare)."""
    seen = read_run(trained)["train"][:, 3]
    during = f"{seen[:updates].mean():.2f} -> {seen[-updates:].mean():.2f}" if len(seen) \
        else "not logged"
    return (f"round {r}: {results(after)['mean_success_rate']:.1%} (world model during RL, "
            f"first / last {updates} updates: {during})")


def world_model_stages(root: Path, exp: Experiment, ckpt: str, record: Path,
                       recording: list[str], extra: list[str], times: dict,
                       stop_after: str | None) -> tuple[list[str], list[Path]]:
    """Record the SFT policy in the real env (``recording``: its overrides), train the
    world model on both recordings; returns the RL stage's overrides that put it in that
    world model, and the recordings."""
    policy = stage("record_policy", root, exp.config, ["--record", ckpt, *POLICY_RECORDING,
                                                       *recording], "record_results.json",
                   times)
    if stop_after == "record_policy":
        return [], []
    recordings = [record, policy]
    return train_world_model("world_model", root, exp, recordings, extra, times), recordings


def train_world_model(name: str, root: Path, exp: Experiment, recordings: list[Path],
                      extra: list[str], times: dict) -> list[str]:
    """Stage ``name``: the world model trained on ``recordings`` (the first is the
    expert's, whose first frames reset it; the others, the policies' own, are where
    ``env.world_model.branch.share`` branches from); returns the overrides that put RL
    in it."""
    datasets = f"world_model.datasets=[{','.join(str(r / 'dataset') for r in recordings)}]"
    # one process on the machine: every core for its torch ops
    threads = f"run.torch_threads={os.cpu_count() or 1}"
    wm = stage(name, root, exp.config, ["--train-world-model", datasets, threads, *extra],
               "world_model_summary.json", times)
    return [f"env.world_model.checkpoint={wm / 'world_model.pt'}",
            f"env.world_model.reset_data=[{recordings[0] / 'dataset'}]",
            f"env.world_model.branch.data=[{','.join(str(r / 'dataset') for r in recordings[1:])}]"]


def world_model_round(r: int, root: Path, exp: Experiment, trained: Path, into: list[str],
                      recordings: list[Path], real: list[str], rl: list[str],
                      extra: list[str], times: dict) -> tuple[Path, Path, list[str]]:
    """Round ``r`` >= 2: record what ``trained``'s policy does (``exp.round_data``),
    retrain the world model on every recording, continue RL in it from ``trained``,
    evaluate in the real env; returns the round's RL and evaluation folders and the
    overrides that put RL in its world model (``recordings`` grows by one). ``into``:
    those of the world model ``trained`` learned in."""
    ckpt = f"model.checkpoint={trained / 'checkpoint.pt'}"
    if exp.round_data == "replay":
        recordings.append(replay_stage(f"replay{r}", root, exp, trained, [*extra, *into], r,
                                       times))
    else:
        recordings.append(stage(f"record_rl{r}", root, exp.config,
                                ["--record", ckpt, *RL_RECORDING,
                                 f"record.first_state={600 + 100 * (r - 2)}", *real,
                                 *exp.record_env],
                                "record_results.json", times))
    into = train_world_model(f"world_model{r}", root, exp, recordings, extra, times)
    trained = stage(f"rl{r}", root, exp.config, [ckpt, *rl, *into], "learner_summary.json",
                    times)
    after = stage(f"eval_rl{r}", root, exp.config,
                  [*EVALUATE, f"model.checkpoint={trained / 'checkpoint.pt'}", *real],
                  "eval/eval_results.json", times)
    return trained, after, into


def replay_stage(name: str, root: Path, exp: Experiment, trained: Path, into: list[str],
                 r: int, times: dict) -> Path:
    """Stage ``name``: ``trained``'s policy runs REPLAY_GROUPS groups in the world model
    it learned in (``into``: the overrides for both envs), and each episode's actions are
    replayed in the real env and recorded there (``benchmarks/bench_reward_agreement.py
    --record``); the agreement between the two verdicts goes to ``agreement.json``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    return run_stage(name, root, [
        str(AGREEMENT), "--config", str(ROOT / exp.config),
        "--checkpoint", str(trained / "checkpoint.pt"), "--groups", str(REPLAY_GROUPS),
        "--first-frame", str(REPLAY_GROUPS * (r - 2)), "--record", str(folder / "dataset"),
        "--out", str(folder / "agreement.json"), "--real", *exp.real_env, *exp.record_env, "--",
        # replays start from first frames (evaluation ids), which never branch: no need to
        # read the branch recordings
        *into, "env.world_model.branch.share=0"], "agreement.json", times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("overrides", nargs="*", help="key=value for every stage")
    p.add_argument("--ppo", action="store_true", help="PPO (value head, GAE) for the RL stage")
    p.add_argument("--scratch", action="store_true",
                   help="also run the RL stage from a fresh policy, for comparison")
    p.add_argument("--sampled", action="store_true",
                   help="also evaluate both checkpoints with sampled actions")
    p.add_argument("--more-trials", action="store_true",
                   help="also evaluate both checkpoints on the experiment's spare states "
                        "(lift_wm: 200 from state 700) and pool them with the first table's")
    p.add_argument("--stop-after", choices=STAGES, default=None,
                   help="stop after this stage (the rest runs next time the command does)")
    p.add_argument("--root", default=None, help="folder of the stages (runs/<experiment>)")
    p.add_argument("--wm-rounds", type=int, default=1,
                   help=f"world-model experiments: rounds of recording the latest policy, "
                        f"retraining the world model and RL in it (1..{MAX_WM_ROUNDS})")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    exp = EXPERIMENTS[args.experiment]
    if not 1 <= args.wm_rounds <= MAX_WM_ROUNDS or (args.wm_rounds > 1 and not exp.world_model):
        p.error(f"--wm-rounds must be 1..{MAX_WM_ROUNDS}, and above 1 only for a world-model "
                f"experiment (synthetic_wm, lift_wm)")
    root = Path(args.root or ROOT / "runs" / args.experiment).resolve()
    extra = list(args.overrides)
    real = list(exp.real_env) + extra  # the stages in the real env
    recording = real + list(exp.record_env)  # those that record
    rl = extra + (list(PPO) if args.ppo else [])
    root.mkdir(parents=True, exist_ok=True)
    times_file = root / TIMES
    times: dict = json.loads(times_file.read_text()) if times_file.exists() else {}
    record = stage("record", root, exp.config, ["--record", *recording],
                   "record_results.json", times)
    if args.stop_after == "record":
        return 0
    sft = stage("sft", root, exp.config, ["--sft", f"sft.datasets=[{record / 'dataset'}]",
                                          *real], "sft_summary.json", times)
    if args.stop_after == "sft":
        return 0
    ckpt = f"model.checkpoint={sft / 'checkpoint.pt'}"
    before = stage("eval_sft", root, exp.config, [*EVALUATE, ckpt, *real],
                   "eval/eval_results.json", times)
    if args.stop_after == "eval_sft":
        print(f"\nSFT evaluation: {results(before)['mean_success_rate']:.1%}", flush=True)
        return 0
    into, recordings = [], []
    if exp.world_model:
        into, recordings = world_model_stages(root, exp, ckpt, record, recording, extra,
                                              times, args.stop_after)
        if args.stop_after in ("record_policy", "world_model"):
            return 0
    trained = stage("rl", root, exp.config, [ckpt, *rl, *into], "learner_summary.json", times)
    if args.stop_after == "rl":
        return 0
    after = stage("eval_rl", root, exp.config,
                  [*EVALUATE, f"model.checkpoint={trained / 'checkpoint.pt'}", *real],
                  "eval/eval_results.json", times)
    rounds = [round_summary(1, trained, after)]
    for r in range(2, args.wm_rounds + 1):
        trained, after, into = world_model_round(r, root, exp, trained, into, recordings,
                                                 real, rl, extra, times)
        rounds.append(round_summary(r, trained, after))
    text = table("Deterministic actions (the mean)", results(before), results(after))
    if args.wm_rounds > 1:
        text += ("Real-env success after each round of RL in the world model (SFT "
                 f"{results(before)['mean_success_rate']:.1%}):\n\n"
                 + "".join(f"- {line}\n" for line in rounds) + "\n")
    if args.more_trials:
        first, trials = exp.more_trials
        more = [*EVALUATE, *exp.spare_states, f"eval.num_trials={trials}"]
        m_before = stage("eval_sft_more", root, exp.config, [*more, ckpt, *real],
                         "eval/eval_results.json", times)
        m_after = stage("eval_rl_more", root, exp.config,
                        [*more, f"model.checkpoint={trained / 'checkpoint.pt'}", *real],
                        "eval/eval_results.json", times)
        text += table(f"Deterministic actions, states {first}-{first + trials - 1}",
                      results(m_before), results(m_after))
        text += table("Both evaluations pooled", pooled(results(before), results(m_before)),
                      pooled(results(after), results(m_after)))
    if args.sampled:
        sampled = ["--eval", "actor.deterministic=false"]
        s_before = stage("eval_sft_sampled", root, exp.config, [*sampled, ckpt, *real],
                         "eval/eval_results.json", times)
        s_after = stage("eval_rl_sampled", root, exp.config,
                        [*sampled, f"model.checkpoint={trained / 'checkpoint.pt'}", *real],
                        "eval/eval_results.json", times)
        text += table("Sampled actions", results(s_before), results(s_after))
    runs = {"SFT -> RL": trained}
    if args.scratch:
        runs["RL from scratch"] = stage("scratch", root, exp.config, [*rl, *into],
                                        "learner_summary.json", times)
    header = f"# {args.experiment}: SFT then {'PPO' if args.ppo else 'GRPO'}\n\n"
    (root / "results.md").write_text(header + text + stage_times(times))
    print("\n" + header + text + stage_times(times), flush=True)
    print(f"curves: {plot_runs(runs, root / 'curves.png')}")
    print(f"results: {root / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
