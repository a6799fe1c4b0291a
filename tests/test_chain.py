"""From demonstrations to RL through launch.py: record -> SFT -> eval -> RL with
evaluation rounds, on the synthetic task without the goal in the state; recording a
policy on a real simulator; resuming behaviour cloning."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from demos import read_demos
from scripts.reproduce import PPO
from tests.conftest import ROOT, launch, small_overrides
from worldmodel.models import WorldModel

pytestmark = pytest.mark.slow
CONFIG = "configs/synthetic_nogoal.yaml"
SMALL = {"sft.batch_size": 16, "sft.val_every": 10, "sft.checkpoint_every": 20,
         "actor.num_actors": 1, "actor.envs_per_actor": 8}


def _scalars(folder, tag):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] \
        else []


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_record_sft_eval_rl_chain(tmp_path):
    rec, sft, rl = tmp_path / "record", tmp_path / "sft", tmp_path / "rl"
    _ok(launch(tmp_path, CONFIG, "--record", **SMALL, **{
        "run.log_dir": rec, "record.episodes_per_task": 24}))
    results = json.loads((rec / "record_results.json").read_text())
    assert results["complete"] and results["episodes"] == 24
    assert results["mean_success_rate"] >= 0.9  # the expert, with action noise 0.3
    demos, report = read_demos([rec / "dataset"])
    assert len(demos) == 24 and not report.bad
    assert sorted(d.init_state_id for d in demos) == list(range(100, 124))
    assert all(d.source == "expert" and len(d) == len(d.main_images) for d in demos)

    _ok(launch(tmp_path, CONFIG, "--sft", **SMALL, **{
        "run.log_dir": sft, "sft.datasets": f"[{rec / 'dataset'}]", "sft.steps": 40}))
    for name in ("checkpoint.pt", "checkpoint.json", "dataset_statistics.json",
                 "sft_summary.json"):
        assert (sft / name).exists(), name
    train = [v for _, v in _scalars(sft, "sft/train_loss")]
    assert len(train) == 40 and np.mean(train[-10:]) < np.mean(train[:10])
    assert len(_scalars(sft, "sft/val_loss")) == 4 and _scalars(sft, "sft/lr")
    stats = json.loads((sft / "dataset_statistics.json").read_text())
    assert stats["synthetic"]["action"]["mask"] == [True] * 6 + [False]

    ckpt = f"{sft / 'checkpoint.pt'}"
    _ok(launch(tmp_path, CONFIG, "--eval", **SMALL, **{
        "run.log_dir": tmp_path / "eval_sft", "model.checkpoint": ckpt,
        "eval.num_trials": 8, "actor.deterministic": True}))
    assert json.loads((tmp_path / "eval_sft" / "eval" / "eval_results.json").read_text())[
        "complete"]

    proc = launch(tmp_path, CONFIG, **SMALL, **{
        "run.log_dir": rl, "model.checkpoint": ckpt, "run.total_updates": 6,
        "eval.every_updates": 3, "eval.num_trials": 6, "eval.envs_per_actor": 2})
    _ok(proc)
    summary = json.loads((rl / "learner_summary.json").read_text())
    assert summary["updates"] == 6 and summary["trained_twice"] == 0
    rounds = [json.loads(x) for x in (rl / "eval_rounds.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in rounds] == [0, 3, 6]
    assert all(r["complete"] and r["episodes"] == 6 for r in rounds)
    # training waits during a round: every round acted by its own version only
    assert all(r["policy_version_spread"] == 0 for r in rounds)
    assert [s for s, _ in _scalars(rl, "eval/success")] == [0, 3, 6]
    assert _scalars(rl, "eval/success_task0") and _scalars(rl, "perf/total_env_steps")
    assert (rl / "curves.png").stat().st_size > 10_000
    assert f"weights from model.checkpoint {ckpt}" in (rl / "learner-0.log").read_text()

    ppo = tmp_path / "ppo"  # PPO from the same checkpoint: its value head starts fresh
    _ok(launch(tmp_path, CONFIG, **SMALL, **{
        "run.log_dir": ppo, "model.checkpoint": ckpt, "run.total_updates": 3,
        "learner.algorithm": "ppo", "model.value_head": True}))
    assert json.loads((ppo / "learner_summary.json").read_text())["updates"] == 3
    assert _scalars(ppo, "train/critic/value_loss")


def test_behaviour_cloning_resumes_where_it_stopped(tmp_path):
    rec, sft = tmp_path / "record", tmp_path / "sft"
    _ok(launch(tmp_path, CONFIG, "--record", **SMALL, **{
        "run.log_dir": rec, "record.episodes_per_task": 8}))
    args = {"run.log_dir": sft, "sft.datasets": f"[{rec / 'dataset'}]"}
    _ok(launch(tmp_path, CONFIG, "--sft", **SMALL, **args, **{"sft.steps": 20}))
    proc = launch(tmp_path, CONFIG, "--sft", "--resume", str(sft), **SMALL, **args,
                  **{"sft.steps": 30})
    _ok(proc)
    assert "resumed behaviour cloning" in proc.stdout and "at step 20" in proc.stdout
    assert json.loads((sft / "sft_summary.json").read_text())["steps"] == 30
    assert [s for s, _ in _scalars(sft, "sft/train_loss")] == list(range(1, 31))


def test_recording_a_policy_on_robosuite_keeps_every_step_and_the_simulator_state(tmp_path):
    """The recorded policy reads both cameras (model.cnn.wrist_camera): the wrist frames
    travel from the simulator through the inference server to the CNN."""
    rec = tmp_path / "record"
    _ok(launch(tmp_path, "configs/robosuite_lift_grpo_tiny.yaml", "--record", **{
        "model.cnn.wrist_camera": True,
        "run.log_dir": rec, "record.source": "policy", "record.episodes_per_task": 2,
        "record.action_noise": 0.1, "env.max_episode_steps": 12, "env.image_size": 32,
        "actor.num_actors": 1, "actor.envs_per_actor": 2, "actor.pipeline_stages": 2}))
    demos, report = read_demos([rec / "dataset"], "upright", ("main", "wrist"))
    assert len(demos) == 2 and not report.bad
    for d in demos:
        assert len(d) == 12 and d.wrist_images.shape == (12, 32, 32, 3)
        assert d.dones[-1] and not d.dones[:-1].any() and d.source.startswith("policy")
    import h5py

    for d in demos:
        path = next((rec / "dataset").rglob(f"state_{d.init_state_id:06d}.hdf5"))
        with h5py.File(path) as f:
            g = f["data/demo_0"]
            assert g["states"].shape[0] == 12 and g["obs/joint_states"].shape == (12, 7)
            np.testing.assert_array_equal(g.attrs["init_state"], g["states"][0])
            assert f["data"].attrs["env_name"] == "Lift"
            # the policy's state is LIBERO's: eef pos + axis-angle, then the two fingers
            both = np.concatenate([g["obs/ee_states"][:], g["obs/gripper_states"][:]], 1)
            np.testing.assert_allclose(both, d.states, rtol=1e-6)


def test_a_killed_recording_actor_records_its_share_again_and_nothing_is_lost(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import small_overrides, start_run, wait_for_text

    rec = tmp_path / "record"
    overrides = small_overrides(tmp_path, **SMALL, **{
        "run.log_dir": rec, "record.episodes_per_task": 120, "env.synthetic.step_sleep_ms": 40,
        "run.restart_backoff_s": 0.2, "run.progress_every_s": 1})
    proc = start_run(tmp_path, ["--record", *overrides], CONFIG)
    try:
        wait_for_text(rec / "learner-0.log", "record ", proc, 120)  # episodes arriving
        time.sleep(1.0)
        os.kill(json.loads((rec / "pids.json").read_text())["actor-0"], signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, (tmp_path / "output.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "output.txt").read_text()
    assert "actor-0 died (killed by SIGKILL)" in out
    results = json.loads((rec / "record_results.json").read_text())
    assert results["complete"] and results["episodes"] == 120
    demos, report = read_demos([rec / "dataset"])
    assert sorted(d.init_state_id for d in demos) == list(range(100, 220))
    assert not report.bad  # no half-written file: a kill leaves only whole ones
    assert not subprocess.run(["find", str(rec), "-name", ".*.tmp"], capture_output=True,
                              text=True).stdout


def test_reproduce_runs_the_chain_by_stages_and_prints_the_table(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, small_overrides

    root = tmp_path / "chain"
    overrides = small_overrides(tmp_path, **SMALL, **{
        "record.episodes_per_task": 8, "sft.steps": 10, "eval.num_trials": 4,
        "eval.every_updates": 0, "run.total_updates": 2})
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "synthetic",
           "--root", str(root), *overrides]

    def run(*extra):
        proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=400,
                              cwd=ROOT)
        _ok(proc)
        return proc.stdout

    run("--stop-after", "sft")
    assert (root / "sft" / "sft_summary.json").exists() and not (root / "eval_sft").exists()
    out = run()  # carries on from the stages already done
    assert "== record: done before" in out and "== sft: done before" in out
    assert "== eval_sft: " in out and "== rl: " in out
    times = json.loads((root / "stage_times.json").read_text())
    assert list(times) == ["record", "sft", "eval_sft", "rl", "eval_rl"]
    table = (root / "results.md").read_text()
    assert "| **mean** | (4 / 4 episodes) |" in table and "| eval_rl |" in table
    assert (root / "curves.png").stat().st_size > 10_000


def test_world_model_chain_train_rl_inside_it_evaluate_in_the_real_env(tmp_path):
    wm_config = "configs/synthetic_world_model.yaml"
    real = {"env.kind": "synthetic", "env.image_size": 64}
    rec, wm, rl = tmp_path / "record", tmp_path / "wm", tmp_path / "rl"
    _ok(launch(tmp_path, wm_config, "--record", **SMALL, **real, **{
        "run.log_dir": rec, "record.episodes_per_task": 12, "env.max_episode_steps": 24}))
    train = {"run.log_dir": wm, "world_model.datasets": f"[{rec / 'dataset'}]",
             "world_model.success_steps": 20, "world_model.val_every": 10,
             "world_model.channels": 8, "world_model.batch_size": 8, "world_model.videos": 1,
             "world_model.val_fraction": 0.25, "world_model.probe_steps": 20,
             # one-call windows, then (in the resumed run) two calls unrolled
             "world_model.rollout_calls": 2, "world_model.rollout_after": 25}
    first = launch(tmp_path, wm_config, "--train-world-model", **train,
                   **{"world_model.steps": 20})
    _ok(first)
    assert "50% of each batch from" in first.stdout  # generated frames for the success model
    proc = launch(tmp_path, wm_config, "--train-world-model", "--resume", str(wm), **train,
                  **{"world_model.steps": 30})  # the predictor trains on from step 20
    _ok(proc)
    assert "resumed the world model" in proc.stdout and "'generator': 20" in proc.stdout
    summary = json.loads((wm / "world_model_summary.json").read_text())
    assert summary["steps"] == {"generator": 30, "success": 20}
    assert summary["val_episodes"] == 3 and np.isfinite(summary["val_psnr_changed"])
    assert 0.0 <= summary["val_auc"] <= 1.0
    assert 0.0 <= summary["val_auc_generated"] <= 1.0  # the success model on generated frames
    assert summary["real_success_rate"] == 1.0  # held-out expert episodes all succeed
    assert 0.0 <= summary["wm_success_on_real_successes"] <= 1.0
    for key in ("val_position_error", "copy_last_position_error", "probe_position_error_real",
                "val_position_gap", "copy_last_position_gap"):
        assert np.isfinite(summary[key]), key
    assert [s for s, _ in _scalars(wm, "world_model/train_loss")] == list(range(1, 31))
    assert [s for s, _ in _scalars(wm, "world_model/val_psnr_gain")] == [10, 20, 30]
    assert [s for s, _ in _scalars(wm, "reward_model/val_auc")] == [10, 20]
    assert (wm / "videos" / "world_model" / "episode000_real_vs_generated.mp4").stat().st_size
    # the threshold benchmark draws the training's held-out episodes and the env's rule
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_success_threshold.py"),
                            "--config", str(ROOT / wm_config), "--world-model",
                            str(wm / "world_model.pt"), *small_overrides(tmp_path, **train),
                            "--thresholds", "0.5", "0.99"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    _ok(bench)
    assert "3 held-out episodes: 0 real failures, 3 real successes" in bench.stdout
    row = next(line for line in bench.stdout.splitlines() if line.startswith("| 0.5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]  # the config's threshold: 0.5
    assert cells[4] == f"{summary['wm_success_on_real_successes']:.0%}"

    _ok(launch(tmp_path, wm_config, **SMALL, **{
        "run.log_dir": rl, "env.world_model.checkpoint": wm / "world_model.pt",
        "env.world_model.reset_data": f"[{rec / 'dataset'}]", "run.total_updates": 2,
        "learner.grpo.filter_equal_groups": False, "env.max_episode_steps": 16}))
    summary = json.loads((rl / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["trained_twice"] == 0
    assert f"world-model env: {wm / 'world_model.pt'}" in (rl / "actor-0.log").read_text()
    in_wm = {"env.world_model.checkpoint": wm / "world_model.pt",
             "env.world_model.reset_data": f"[{rec / 'dataset'}]", "env.max_episode_steps": 16}
    look = subprocess.run([sys.executable, str(ROOT / "scripts/world_model_frames.py"),
                           "--config", str(ROOT / wm_config), "--checkpoint",
                           str(rl / "checkpoint.pt"), "--out", str(tmp_path / "frames.png"),
                           "--episodes", "4", *small_overrides(tmp_path, **SMALL, **in_wm)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    _ok(look)
    won = int(re.search(r"(\d) of 4 episodes succeed in the world model", look.stdout)[1])
    assert (tmp_path / "frames.png").exists() == (won > 0)
    # the same policy's sampled groups in the world model, their actions replayed in the
    # real env from the initial states the reset frames were recorded from
    # (reset frames 1..3), each replay recorded
    replays = tmp_path / "replays"
    agree = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_reward_agreement.py"),
                            "--config", str(ROOT / wm_config), "--checkpoint",
                            str(rl / "checkpoint.pt"), "--groups", "3", "--group-size", "2",
                            "--first-frame", "1", "--record", str(replays),
                            "--real", "env.kind=synthetic", "env.image_size=64", "--out",
                            str(tmp_path / "agree.json"), "--",
                            *small_overrides(tmp_path, **SMALL, **in_wm)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    _ok(agree)
    got = json.loads((tmp_path / "agree.json").read_text())
    assert (got["groups"], got["group_size"], got["first_frame"]) == (3, 2, 1)
    assert got["reset_frame_gap_grey_levels"] < 2.0  # reset frame 1 is its recorded state
    assert got["agreement"] == pytest.approx(1 - got["false_success"] - got["missed"])
    played, report = read_demos([replays])
    assert got["recorded"] == len(played) == 6 and not report.bad
    assert len({d.init_state_id for d in played}) == 3  # a group's pair shares its start
    assert all(d.source == f"world_model_replay:{rl / 'checkpoint.pt'}" for d in played)
    assert np.mean([d.success.any() for d in played]) == got["real_success"]
    # binary scores of 1 (reward_coef 1): the returns rank episodes as their successes do
    assert got["return_advantage_correlation"] == pytest.approx(
        got["advantage_correlation"], nan_ok=True)
    # the policy's actions on generated frames against those on the real ones
    acts = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_policy_on_generated.py"),
                           "--config", str(ROOT / wm_config), "--checkpoint",
                           str(rl / "checkpoint.pt"), "--world-model", str(wm / "world_model.pt"),
                           "--data", str(rec / "dataset"), "--episodes", "3", "--out",
                           str(tmp_path / "acts.json"), "--", *small_overrides(tmp_path, **SMALL)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    _ok(acts)
    stretches = json.loads((tmp_path / "acts.json").read_text())["stretches"]
    assert stretches and all(np.isfinite(r["arm_open_loop"]) and 0 <= r["gripper_same_one_step"]
                             <= 1 for r in stretches)
    # the world model fine-tuned on them: it starts from its own weights and bounds
    tuned = tmp_path / "wm_tuned"
    more = {**train, "run.log_dir": tuned, "world_model.init": wm / "world_model.pt",
            "world_model.datasets": f"[{rec / 'dataset'},{replays}]",
            "world_model.steps": 4, "world_model.success_steps": 4}
    _ok(launch(tmp_path, wm_config, "--train-world-model", **more))
    before, after = (WorldModel.load(d / "world_model.pt") for d in (wm, tuned))
    assert after.info["init"] == str(wm / "world_model.pt")
    assert torch.equal(before.action_low, after.action_low)
    moved = [not torch.equal(a, b) for a, b in zip(before.generator.parameters(),
                                                    after.generator.parameters())]
    assert any(moved)
    wrong = launch(tmp_path, wm_config, "--train-world-model", timeout=120,
                   **{**more, "run.log_dir": tmp_path / "wrong", "world_model.condition_frames": 2})
    assert wrong.returncode != 0 and "make them match" in wrong.stdout + wrong.stderr
    ppo = tmp_path / "ppo"  # PPO in the same world model: GAE over its per-step rewards
    _ok(launch(tmp_path, wm_config, *PPO, "learner.ppo.critic_warmup_updates=1", **SMALL, **{
        "run.log_dir": ppo, "env.world_model.checkpoint": wm / "world_model.pt",
        "env.world_model.reset_data": f"[{rec / 'dataset'}]", "run.total_updates": 3,
        "env.max_episode_steps": 16}))
    summary = json.loads((ppo / "learner_summary.json").read_text())
    assert summary["updates"] == 3 and summary["trained_twice"] == 0
    values = _scalars(ppo, "train/critic/value_loss")
    assert [s for s, _ in values] == [1, 2, 3] and np.isfinite([v for _, v in values]).all()
    bad = launch(tmp_path, wm_config, **SMALL, **{  # a size the world model does not make
        "run.log_dir": tmp_path / "bad", "env.world_model.checkpoint": wm / "world_model.pt",
        "env.world_model.reset_data": f"[{rec / 'dataset'}]", "env.image_size": 16},
        timeout=120)
    assert bad.returncode != 0 and "set env.image_size=32" in bad.stdout + bad.stderr
    assert "restart 1/" not in bad.stdout + bad.stderr  # refused at once, not retried

    _ok(launch(tmp_path, wm_config, "--eval", **SMALL, **real, **{
        "run.log_dir": tmp_path / "eval", "model.checkpoint": rl / "checkpoint.pt",
        "eval.num_trials": 4, "actor.deterministic": True}))
    results = json.loads((tmp_path / "eval" / "eval" / "eval_results.json").read_text())
    assert results["complete"] and results["episodes"] == 4
