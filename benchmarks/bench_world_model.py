"""Does the world model rank policies as the real env does, and how fast does it step?

    python benchmarks/bench_world_model.py synthetic_wm            # after reproduce.py's
    python benchmarks/bench_world_model.py lift_wm --episodes 3 6 10 20 40

From the experiment's folder (``runs/<experiment>/``, as ``scripts/reproduce.py`` leaves
it: ``record/dataset`` and ``world_model/world_model.pt``), behaviour cloning makes one
policy per demonstration count (``--episodes``; fewer demonstrations, a weaker policy),
plus any ``--checkpoints`` given. Each policy is evaluated deterministically on the same
trials in the world model and in the real env (``launch.py --eval``); the table has both
success rates, env steps per second of each evaluation (the same envs, actors and
trials), and Spearman's rank correlation of the two columns (with ``--checkpoints``,
also over the SFT policies alone). A real-env evaluation
already in the benchmark's folder for the same checkpoint and trials is reused (the real
env does not change when the world model does). Written to
``runs/<experiment>/world_model_ranking.{json,md}``. With ``--more-trials`` each policy is
also evaluated in the real env on the experiment's spare states (``reproduce.py
--more-trials``' states; lift_wm: 200 from state 700) and the real column pools both
evaluations (300 trials: a real success measured to about +-3 points rather than +-5,
finer than most gaps between the policies). With ``--agreement N`` each policy
also records N noisy episodes in the real env and the table adds the world model's
verdict on them open loop (its success on the episodes that really failed and on those
that really succeeded), which separates the world model's own errors from the closed
loop's; with ``--agreement-noise 0`` the episodes are the deterministic evaluation's own
(states 0..N-1, as the real column's trials), the trajectories the closed loop in the
world model starts like.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.reproduce import EXPERIMENTS, pooled, results  # noqa: E402
from worldmodel.metrics import spearman  # noqa: E402


def launch(config: str, args: list[str]) -> float:
    """Run ``launch.py``; its wall-clock seconds (a failure stops the benchmark)."""
    began = time.monotonic()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.monotonic() - began


def evaluate(config: str, checkpoint: Path, folder: Path, env: list[str],
             trials: int, reuse: bool = False, reuse_from: tuple[Path, ...] = ()) -> dict:
    """Deterministic evaluation of ``checkpoint``: success, env steps and their rate
    (with ``reuse``, an earlier evaluation in ``folder`` of the same checkpoint, trials and
    env is read back instead, or one :func:`find_evaluation` finds under ``reuse_from``:
    seconds None, ``from`` its folder)."""
    done = folder / "eval" / "eval_results.json"
    info = folder / "policy.json"
    key = {"checkpoint": str(checkpoint), "trials": trials, "env": env}
    seconds, source = None, folder
    overrides = ["--eval", f"model.checkpoint={checkpoint}", "actor.deterministic=true",
                 f"eval.num_trials={trials}", f"run.log_dir={folder}", "video.eval_per_task=0",
                 *env]
    if not (reuse and done.exists() and info.exists() and json.loads(info.read_text()) == key):
        found = find_evaluation(reuse_from, config, checkpoint, overrides[1:]) if reuse else None
        if found is None:
            seconds = launch(config, overrides)
            info.write_text(json.dumps(key))
        else:
            source = found
    res = results(source)
    steps = sum(t["trials"] * t["mean_episode_steps"] for t in res["tasks"])
    return {"success": res["mean_success_rate"], "seconds": seconds, "env_steps": steps,
            "from": str(source)}


def evaluation_key(config: dict) -> dict:
    """What makes two real-env evaluations of one checkpoint the same measurement, from a
    config as a dict (as ``eval_results.json`` keeps it): the env (its world-model
    section aside: a real env does not read it), the trials, the first state (0 in a
    config saved before ``eval.first_state`` existed: evaluations started there) and
    deterministic actions."""
    return {"env": {k: v for k, v in config["env"].items() if k != "world_model"},
            "trials": config["eval"]["num_trials"],
            "first_state": config["eval"].get("first_state", 0),
            "deterministic": config["actor"]["deterministic"]}


def find_evaluation(folders, config: str, checkpoint: Path, overrides: list[str]
                    ) -> Path | None:
    """A ``launch.py --eval`` folder under ``folders`` (any depth; the one holding
    ``eval/eval_results.json``) that evaluated ``checkpoint`` completely with the
    :func:`evaluation_key` that ``config`` with ``overrides`` has, after the checkpoint
    was last written (a checkpoint rewritten since is another policy); None if none.
    What ``scripts/reproduce.py``'s chains evaluated need not be evaluated again."""
    from configs import load_config

    want = evaluation_key(dataclasses.asdict(load_config(ROOT / config, overrides)))
    target, written = checkpoint.resolve(), checkpoint.stat().st_mtime
    for done in sorted(p for f in folders for p in Path(f).rglob("eval/eval_results.json")):
        res = json.loads(done.read_text())
        if "config" not in res or "checkpoint" not in res or not res["complete"] or \
                (ROOT / res["checkpoint"]).resolve() != target:
            continue
        if done.stat().st_mtime >= written and evaluation_key(res["config"]) == want:
            return done.parent.parent
    return None


def agreement(exp, checkpoint: Path, folder: Path, episodes: int, first_state: int,
              noise: float, overrides: list[str]) -> dict:
    """Record ``episodes`` of ``checkpoint`` in the real env from ``first_state`` on, with
    Gaussian action noise ``noise`` (``reproduce.py``'s policy recording: 0.3; 0: the
    deterministic actions; a recording of the same key in ``folder`` is reused), then
    judge them open loop in the world model of the config with ``overrides`` (the
    world-model evaluations' own): with a state model, its verdicts from each recorded
    first state and the recorded actions (:func:`envs.sim_view.open_loop_verdicts`),
    else the frame predictor's (:func:`worldmodel.evaluate.open_loop_metrics`). Either
    way the world model's success rate on the real failures and successes
    (:func:`worldmodel.evaluate.agreement_rates`) and ``other_on_real_failures``: where
    its false successes come from (a state model: the simulator's own check on the
    predicted states, the dynamics' share; frames: the success model on the real frames,
    the judge's share)."""
    from configs import load_config
    from worldmodel.models import WorldModel

    key = {"checkpoint": str(checkpoint), "episodes": episodes, "first_state": first_state,
           "noise": noise}
    info = folder / "policy.json"
    if not ((folder / "record_results.json").exists() and info.exists()
            and json.loads(info.read_text()) == key):
        shutil.rmtree(folder, ignore_errors=True)  # another policy's, or unfinished
        launch(exp.config, ["--record", f"model.checkpoint={checkpoint}", "record.source=policy",
                            f"record.first_state={first_state}", f"record.action_noise={noise}",
                            f"actor.deterministic={str(noise == 0).lower()}",
                            f"record.episodes_per_task={episodes}", f"run.log_dir={folder}",
                            *exp.real_env])
        info.write_text(json.dumps(key))
    cfg = load_config(ROOT / exp.config, overrides)
    rule = cfg.env.world_model
    model = WorldModel.load(rule.checkpoint)
    if model.state_model is not None:
        return _state_agreement(cfg, model.state_model, folder / "dataset")
    from envs import image_orientation
    from worldmodel.data import load_episodes
    from worldmodel.evaluate import open_loop_metrics

    real, _ = load_episodes([folder / "dataset"], model.image_size, image_orientation(cfg.env),
                            model.cameras)
    m = open_loop_metrics(model, real, rule.success_threshold, "cpu", rule.success_frames)
    return {**m, "other_on_real_failures": m["scorer_success_on_real_failures"]}


def _state_agreement(cfg, state_model, dataset: Path) -> dict:
    """:func:`agreement`'s verdicts of a state model (or ensemble) on ``dataset``."""
    from envs.sim_view import open_loop_verdicts, scene_view
    from worldmodel.evaluate import agreement_rates
    from worldmodel.state_model import load_state_episodes

    view = scene_view(cfg.env, cfg.model.action_dim, state_model.state_dim)
    try:
        v = open_loop_verdicts(view, state_model, load_state_episodes([dataset])[0],
                               cfg.env.world_model.success_threshold)
    finally:
        view.close()
    dynamics = agreement_rates(v["simulator"], v["real"])["wm_success_on_real_failures"]
    return {**agreement_rates(v["learned"], v["real"]), "other_on_real_failures": dynamics}


def rate(evaluation: dict) -> str:
    """Env steps per second of an evaluation run ("(reused)" for one read back)."""
    if evaluation["seconds"] is None:
        return "(reused)"
    return f"{evaluation['env_steps'] / evaluation['seconds']:.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=[k for k, e in EXPERIMENTS.items() if e.world_model])
    p.add_argument("--episodes", type=int, nargs="*", default=[3, 6, 10, 20, 40],
                   help="demonstrations per SFT policy (one policy each)")
    p.add_argument("--checkpoints", nargs="*", default=[], help="more policies to rank")
    p.add_argument("--trials", type=int, default=100, help="evaluation trials per policy")
    p.add_argument("--wm-trials", type=int, default=None,
                   help="trials per policy in the world model (default --trials); past the "
                        "held-out evaluation states with --set env.held_out_eval_states=false, "
                        "and as many reset frames (a trial past them repeats one exactly)")
    p.add_argument("--more-trials", action="store_true",
                   help="also evaluate each policy in the real env on the experiment's spare "
                        "states (lift_wm: 200 from state 700), rank on both pooled, and rank "
                        "the first against the spare (the real env against itself)")
    p.add_argument("--root", default=None, help="the experiment's folder")
    p.add_argument("--reuse-evals", nargs="*", default=[], metavar="DIR",
                   help="read a real-env evaluation of the same checkpoint and settings "
                        "found under these folders (e.g. runs: the chains' evaluations) "
                        "instead of running it")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also record N episodes of each policy in the real env (noisy, "
                        "states from 600: none the world model trained on) and report the "
                        "world model's outcome agreement on them, open loop")
    p.add_argument("--agreement-noise", type=float, default=0.3, metavar="STD",
                   help="the action noise of --agreement's episodes; 0: deterministic "
                        "actions on the evaluation's states 0..N-1 instead")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the world-model evaluations (e.g. "
                        "env.world_model.success_threshold=0.5); their folders and the table "
                        "get a suffix, the real-env evaluations are shared")
    args = p.parse_args(argv)
    suffix = "".join(f"_{re.sub(r'[^A-Za-z0-9.]+', '-', kv)}" for kv in args.set)
    exp = EXPERIMENTS[args.experiment]
    root = Path(args.root or ROOT / "runs" / args.experiment).resolve()
    wm, data = root / "world_model" / "world_model.pt", root / "record" / "dataset"
    if not wm.exists():
        raise SystemExit(f"{wm} does not exist: run scripts/reproduce.py {args.experiment} "
                         "--stop-after world_model first")
    in_wm = [f"env.world_model.checkpoint={wm}", f"env.world_model.reset_data=[{data}]",
             *args.set]
    bench = root / "ranking"
    reused = tuple(Path(d) for d in args.reuse_evals)
    wm_trials = args.wm_trials or args.trials
    policies = {}
    for n in args.episodes:
        folder = bench / f"sft_{n}"
        if not (folder / "sft_summary.json").exists():
            launch(exp.config, ["--sft", f"sft.datasets=[{data}]", f"sft.max_episodes={n}",
                                f"run.log_dir={folder}", *exp.real_env])
        policies[f"SFT on {n} demonstrations"] = folder / "checkpoint.pt"
    policies.update({c: Path(c).resolve() for c in args.checkpoints})
    rows = []
    for k, (name, ckpt) in enumerate(policies.items()):
        # the real env does not change between world models: its evaluations are reused
        real = evaluate(exp.config, ckpt, bench / f"real_{k}", list(exp.real_env), args.trials,
                        reuse=True, reuse_from=reused)
        if args.more_trials:
            more = evaluate(exp.config, ckpt, bench / f"real_more_{k}",
                            [*exp.real_env, *exp.spare_states], exp.more_trials[1], reuse=True,
                            reuse_from=reused)
            # steps/s stay the first evaluation's: the same env and policy
            first, spare = results(Path(real["from"])), results(Path(more["from"]))
            real["success"] = pooled(first, spare)["mean_success_rate"]
            real["halves"] = [first["mean_success_rate"], spare["mean_success_rate"]]
            real["more_from"] = more["from"]
        model = evaluate(exp.config, ckpt, bench / f"wm_{k}{suffix}", in_wm, wm_trials)
        rows.append({"policy": name, "checkpoint": str(ckpt), "real": real, "world_model": model})
        print(f"{name}: real {real['success']:.1%}, world model {model['success']:.1%}",
              flush=True)
    if args.agreement:
        noise = args.agreement_noise
        for k, r in enumerate(rows):
            first, folder = (600 + k * args.agreement, bench / f"episodes_{k}") if noise else \
                (0, bench / f"episodes_{k}_deterministic")
            r["open_loop"] = agreement(exp, Path(r["checkpoint"]), folder, args.agreement,
                                       first, noise, in_wm)
            print(f"{r['policy']}: open loop {r['open_loop']}", flush=True)
    def rank(part: list[dict]) -> float:
        return spearman([r["real"]["success"] for r in part],
                        [r["world_model"]["success"] for r in part])

    rho = rank(rows)
    sft = rows[:len(args.episodes)]  # the SFT policies alone, when checkpoints join them
    # two points always rank as +-1: no agreement to read from fewer than three
    rho_sft = rank(sft) if args.checkpoints and len(sft) >= 3 else None
    # the real env ranked against itself, on disjoint states: how far the policies' order
    # is measurable at these trial counts, whatever ranks them
    rho_real = spearman(*zip(*(r["real"]["halves"] for r in rows))) \
        if args.more_trials else None
    lines = ["| policy | real env | world model | real env steps/s | world model steps/s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["real"], r["world_model"]
        lines.append(f"| {r['policy']} | {a['success']:.1%} | {b['success']:.1%} | "
                     f"{rate(a)} | {rate(b)} |")
    if args.agreement:
        how = f"action noise {noise}, states from 600" if noise else \
            f"deterministic, the evaluation's states 0-{args.agreement - 1}"
        lines += ["", f"Open loop, the recorded actions of each policy's real episodes ({how}) "
                  "replayed in the world model:", "",
                  "| policy | real success | world model | WM success on real failures | "
                  "on real successes | agreement | on real failures: the simulator's check "
                  "on the predicted states (state model) or the success model on the real "
                  "frames (frames) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            o = r["open_loop"]
            lines.append(f"| {r['policy']} | {o['real_success_rate']:.1%} | "
                         f"{o['wm_success_rate']:.1%} | {o['wm_success_on_real_failures']:.1%}"
                         f" | {o['wm_success_on_real_successes']:.1%} | "
                         f"{o['outcome_agreement']:.1%} | "
                         f"{o['other_on_real_failures']:.1%} |")
    real_trials = args.trials + (exp.more_trials[1] if args.more_trials else 0)
    lines.append(f"\nSpearman's rank correlation: {rho:.3f} over {len(rows)} policies, "
                 f"{real_trials} real and {wm_trials} world-model trials each (steps/s: "
                 "whole evaluation runs, start-up included)")
    if rho_real is not None:
        lines.append(f"The real env against itself, its {args.trials} trials against the "
                     f"{exp.more_trials[1]} from state {exp.more_trials[0]}: {rho_real:.3f}")
    if rho_sft is not None:  # nan: one column constant (ties), no ranking to agree with
        lines.append(f"Over the {len(sft)} SFT policies alone: " + (
            f"{rho_sft:.3f}" if not math.isnan(rho_sft) else "undefined (a column ties)"))
    text = "\n".join(lines)
    print("\n" + text)
    (root / f"world_model_ranking{suffix}.md").write_text(text + "\n")
    (root / f"world_model_ranking{suffix}.json").write_text(json.dumps(
        {"spearman": rho, "spearman_sft": rho_sft, "spearman_real_halves": rho_real,
         "real_trials": real_trials,
         "world_model_trials": wm_trials, "set": args.set,
         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
