"""Evaluation: the success table, checkpoint loading, and eval runs with videos."""

from __future__ import annotations

import dataclasses
import json

import imageio.v3 as iio
import pytest
import torch

from learner.evaluator import EvalTable
from models import build_policy, load_checkpoint
from tests.conftest import ROOT, launch, small_overrides
from tests.messages_factory import trajectory


def _episode(init_state_id, success, text="put the bowl on the plate", error=""):
    return dataclasses.replace(trajectory(), init_state_id=init_state_id, success_once=success,
                               task_description=text, env_error=error, env_steps=10)


def test_eval_table_by_hand():
    table = EvalTable({0, 1, 2, 1000, 1001, 1002})
    for ep in [_episode(0, True), _episode(1, False), _episode(2, True),
               _episode(1000, False, "open the drawer"), _episode(1001, False, "open the drawer",
                                                                 "MuJoCo instability")]:
        table.add(ep)
    table.add(_episode(0, False))   # the same trial again: ignored
    table.add(_episode(5000, True))  # not a trial of this evaluation: ignored
    assert not table.complete and table.unexpected == 2 and table.env_errors == 1
    table.add(_episode(1002, True, "open the drawer"))
    assert table.complete
    assert table.tasks[0].successes == 2 and table.tasks[1].successes == 1
    assert table.mean_success == pytest.approx((2 / 3 + 1 / 3) / 2)
    report = table.to_json()
    assert [t["task_id"] for t in report["tasks"]] == [0, 1]
    assert report["tasks"][1]["instruction"] == "open the drawer"
    md = table.to_markdown("title")
    assert "| 0 | put the bowl on the plate | 2 | 3 | 66.7% |" in md
    assert "**50.0%**" in md


def test_checkpoint_loading_and_errors(small_cfg, tmp_path):
    policy = build_policy(small_cfg.model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    torch.save({"model": policy.state_dict()}, tmp_path / "checkpoint.pt")
    cfg = dataclasses.replace(small_cfg.model, checkpoint=str(tmp_path / "checkpoint.pt"))
    loaded = build_policy(cfg)
    for a, b in zip(policy.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(loaded, str(tmp_path / "nope.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*cannot be loaded"):
        load_checkpoint(loaded, str(tmp_path / "bad.pt"))


def test_a_ppo_checkpoint_evaluates_without_its_value_head(small_cfg, tmp_path):
    ppo = build_policy(dataclasses.replace(small_cfg.model, value_head=True))
    torch.save({"model": ppo.state_dict()}, tmp_path / "checkpoint.pt")
    plain = build_policy(dataclasses.replace(small_cfg.model,
                                             checkpoint=str(tmp_path / "checkpoint.pt")))
    assert plain.value_head is None
    trunk = {k: v for k, v in ppo.state_dict().items() if not k.startswith("value_head.")}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in trunk.items())
    # Any other extra tensor is still refused.
    torch.save({"model": {**ppo.state_dict(), "extra.weight": torch.zeros(1)}},
               tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="unexpected \\['extra.weight'\\]"):
        load_checkpoint(plain, str(tmp_path / "odd.pt"))


def _playable(path) -> int:
    data = path.read_bytes()
    assert data[4:8] == b"ftyp"
    frames = iio.imread(path, index=None)
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.std() > 3
    return len(frames)


@pytest.mark.slow
def test_a_missing_checkpoint_or_world_model_is_refused_before_any_role_starts(tmp_path):
    """A config error, not a crash to restart: one line naming the key and the fix."""
    missing = tmp_path / "nowhere" / "checkpoint.pt"
    out = launch(tmp_path, "configs/synthetic_grpo.yaml", "--eval", timeout=120,
                 **{"model.checkpoint": str(missing)})
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-2000:]
    assert f"config error: model.checkpoint '{missing}' is not a file; give a run's " \
           "checkpoint.pt" in text
    assert "starting " not in text and "restart" not in text
    out = launch(tmp_path, "configs/synthetic_world_model.yaml", timeout=120,
                 **{"env.world_model.checkpoint": str(missing)})
    text = out.stdout + out.stderr
    assert out.returncode == 2 and f"config error: env.world_model: ['{missing}'" in text, \
        text[-2000:]
    assert "starting " not in text


def test_synthetic_eval_of_a_checkpoint(tmp_path):
    from configs import load_config

    # trials from state 700: the actors' plan and the evaluator's table must agree on it,
    # or the table never completes
    overrides = {"eval.num_trials": 12, "eval.first_state": 700, "actor.envs_per_actor": 4,
                 "actor.deterministic": True, "video.eval_per_task": 2}
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **overrides, **{"actor.group_size": 1}))
    torch.save({"model": build_policy(cfg.model).state_dict()}, tmp_path / "checkpoint.pt")
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", "--eval", timeout=120,
                    **overrides, **{"model.checkpoint": tmp_path / "checkpoint.pt"})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    run = tmp_path / "run" / "eval"  # --eval writes beside the training run's logs
    report = json.loads((run / "eval_results.json").read_text())
    assert report["complete"] and report["episodes"] == 12
    assert "12 trials per task from state 700" in report["title"]
    assert report["tasks"][0]["trials"] == 12 and report["checkpoint"].endswith("checkpoint.pt")
    assert "| **mean** |" in (run / "eval_results.md").read_text() and "| **mean** |" in out
    assert len(list((run / "videos" / "eval").glob("task000_trial00[01]_*.mp4"))) == 2


@pytest.mark.slow
def test_libero_eval_writes_table_and_videos(tmp_path):
    result = launch(tmp_path, "configs/libero_spatial_eval.yaml", **{
        "env.libero.task_ids": "[0,1]", "eval.num_trials": 2, "env.max_episode_steps": 12,
        "env.image_size": 64, "env.fast_render": True, "actor.num_actors": 1,
        "actor.envs_per_actor": 2, "actor.group_size": 1, "env.synthetic.progress_reward": 0.0,
        "model.cnn.image_resolution": 32})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    run = tmp_path / "run"
    report = json.loads((run / "eval_results.json").read_text())
    assert report["complete"] and report["episodes"] == 4
    assert [(t["task_id"], t["trials"]) for t in report["tasks"]] == [(0, 2), (1, 2)]
    assert report["tasks"][0]["instruction"].startswith("pick up the black bowl")
    assert (run / "eval_results.md").read_text().count("| pick up") == 2
    videos = sorted((run / "videos" / "eval").glob("*.mp4"))
    assert [v.name.split("_")[:2] for v in videos] == [["task000", "trial000"],
                                                         ["task001", "trial000"]]
    assert _playable(videos[0]) == 13  # the first frame, then one per step
    assert "video:" in out and str(videos[0]) in out


@pytest.mark.slow
def test_libero_training_all_roles(tmp_path):
    result = launch(tmp_path, "configs/libero_spatial_grpo_tiny.yaml", **{
        "run.total_updates": 2, "env.max_episode_steps": 16, "env.image_size": 64,
        "actor.num_actors": 1, "actor.envs_per_actor": 4, "actor.group_size": 2,
        "learner.groups_per_update": 1, "learner.max_ready_groups": 2,
        "video.train_every": 2, "env.synthetic.progress_reward": 0.0,
        "model.cnn.image_resolution": 32})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["episodes_received"] >= 4
    assert summary["duplicates"] == 0
    assert "rendering: MUJOCO_GL=" in out
    videos = list((run / "videos" / "train").glob("*.mp4"))
    assert videos and _playable(videos[0]) == 17
