"""scripts/reproduce.py's world-model rounds, with its stages replaced by a stand-in that
records each stage's arguments (the stages themselves run for real in test_chain.py):
every round records the latest policy from fresh states (or replays its world-model
episodes in the real env), retrains the world model on every recording so far and
continues RL from the latest checkpoint."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture
def reproduce(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce", module)  # its dataclass looks itself up
    spec.loader.exec_module(module)
    calls = {}

    def stage(name, root, config, args, done_file, times):
        folder = root / name
        calls[name] = args
        if name == "rl3":  # its training success, 30 updates: i / 50 at update i
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(folder)) as tb:
                for i in range(30):
                    tb.add_scalar("env/success_once", i / 50, i)
        rate = 0.1 * len(calls)  # each evaluation a different figure
        (folder / "eval").mkdir(parents=True, exist_ok=True)
        (folder / "eval" / "eval_results.json").write_text(json.dumps({
            "mean_success_rate": rate, "episodes": 10,
            "tasks": [{"task_id": 0, "instruction": "go", "success_rate": rate,
                       "trials": 10}]}))
        return folder

    def run_stage(name, root, cmd, done_file, times):
        calls[name] = cmd
        return root / name

    monkeypatch.setattr(module, "stage", stage)
    monkeypatch.setattr(module, "run_stage", run_stage)
    monkeypatch.setattr(module, "plot_runs", lambda runs, path: path)
    return module, calls


def _value(args, key):
    return next(a.split("=", 1)[1] for a in args if a.startswith(key + "="))


def test_world_model_rounds_chain_recordings_models_and_checkpoints(reproduce, tmp_path):
    module, calls = reproduce
    assert module.main(["synthetic_wm", "--root", str(tmp_path), "--wm-rounds", "3"]) == 0
    assert list(calls) == ["record", "sft", "eval_sft", "record_policy", "world_model", "rl",
                           "eval_rl", "record_rl2", "world_model2", "rl2", "eval_rl2",
                           "record_rl3", "world_model3", "rl3", "eval_rl3"]
    # each round records the policy the previous round trained, from states no one used
    assert _value(calls["record_rl2"], "model.checkpoint") == str(tmp_path / "rl/checkpoint.pt")
    assert _value(calls["record_rl3"], "model.checkpoint") == str(tmp_path / "rl2/checkpoint.pt")
    assert [_value(calls[f"record_rl{r}"], "record.first_state") for r in (2, 3)] == ["600", "700"]
    # the world model learns from every recording so far; resets stay the expert's
    datasets = _value(calls["world_model3"], "world_model.datasets")
    assert datasets == "[" + ",".join(str(tmp_path / d / "dataset") for d in (
        "record", "record_policy", "record_rl2", "record_rl3")) + "]"
    assert _value(calls["rl3"], "env.world_model.checkpoint") == \
        str(tmp_path / "world_model3/world_model.pt")
    assert _value(calls["rl3"], "env.world_model.reset_data") == \
        f"[{tmp_path / 'record/dataset'}]"
    # branches (with env.world_model.branch.share) from the policies' own recordings
    assert _value(calls["rl3"], "env.world_model.branch.data") == "[" + ",".join(
        str(tmp_path / d / "dataset") for d in ("record_policy", "record_rl2", "record_rl3")) + "]"
    assert _value(calls["rl3"], "model.checkpoint") == str(tmp_path / "rl2/checkpoint.pt")
    # the table compares the SFT evaluation with the last round's, and lists each round
    text = (tmp_path / "results.md").read_text()
    assert "| **30.0%** | **150.0%** |" in text  # stand-in figures: eval_sft 3rd, eval_rl3 15th
    assert "- round 1: 70.0% (world model during RL, first / last 10 updates: not logged)" \
        in text and "- round 2: 110.0% (" in text
    # rl3's updates 0-9 averaged 0.09 in the world model, 20-29 0.49
    assert "- round 3: 150.0% (world model during RL, first / last 10 updates: 0.09 -> 0.49)" \
        in text


def test_replay_rounds_replay_the_policy_in_the_world_model_it_learned_in(reproduce, tmp_path):
    module, calls = reproduce
    assert module.main(["lift_wm", "--root", str(tmp_path), "--wm-rounds", "3", "a.b=1"]) == 0
    assert [c for c in calls if c.startswith(("replay", "record_rl"))] == ["replay2", "replay3"]
    for r, trained, wm, first in ((2, "rl", "world_model", "0"), (3, "rl2", "world_model2", "24")):
        cmd = calls[f"replay{r}"]
        assert cmd[0].endswith("bench_reward_agreement.py")
        assert cmd[cmd.index("--checkpoint") + 1] == str(tmp_path / trained / "checkpoint.pt")
        assert cmd[cmd.index("--first-frame") + 1] == first
        assert cmd[cmd.index("--record") + 1] == str(tmp_path / f"replay{r}" / "dataset")
        both = cmd[cmd.index("--") + 1:]  # the world model the policy was trained in
        assert _value(both, "env.world_model.checkpoint") == str(tmp_path / wm / "world_model.pt")
        assert _value(both, "a.b") == "1"
        real = cmd[cmd.index("--real") + 1:cmd.index("--")]
        assert "env.kind=robosuite" in real and "env.success_hold_steps=8" in real
    datasets = _value(calls["world_model3"], "world_model.datasets")
    assert datasets == "[" + ",".join(str(tmp_path / d / "dataset") for d in (
        "record", "record_policy", "replay2", "replay3")) + "]"
    assert _value(calls["rl3"], "model.checkpoint") == str(tmp_path / "rl2/checkpoint.pt")


def test_replays_never_read_the_branch_recordings(reproduce, tmp_path):
    """Replays start from first frames, which never branch: the chain's branch.share is
    turned off for them (the config loader takes the last value of a key), kept for RL."""
    from configs import load_config

    module, calls = reproduce
    share = "env.world_model.branch.share=0.5"
    assert module.main(["lift_wm", "--root", str(tmp_path), "--wm-rounds", "2", share]) == 0
    cmd = calls["replay2"]
    config = cmd[cmd.index("--config") + 1]
    assert load_config(config, cmd[cmd.index("--") + 1:]).env.world_model.branch.share == 0
    assert load_config(config, calls["rl2"]).env.world_model.branch.share == 0.5


def test_more_trials_evaluate_both_policies_on_spare_states_and_pool_them(reproduce, tmp_path):
    module, calls = reproduce
    assert module.main(["lift_wm", "--root", str(tmp_path), "--wm-rounds", "2",
                        "--more-trials"]) == 0
    for name, policy in (("eval_sft_more", "sft"), ("eval_rl_more", "rl2")):
        args = calls[name]
        assert _value(args, "model.checkpoint") == str(tmp_path / policy / "checkpoint.pt")
        assert _value(args, "eval.first_state") == "700"
        assert _value(args, "eval.num_trials") == "200"
        assert _value(args, "env.held_out_eval_states") == "false" and "env.kind=robosuite" in args
    names = ("eval_sft", "eval_sft_more", "eval_rl2", "eval_rl_more")
    rate = {n: json.loads((tmp_path / n / "eval" / "eval_results.json").read_text())
            ["mean_success_rate"] for n in names}
    text = (tmp_path / "results.md").read_text()
    pooled = text[text.index("Both evaluations pooled"):]
    before, after = (rate["eval_sft"] + rate["eval_sft_more"]) / 2, \
        (rate["eval_rl2"] + rate["eval_rl_more"]) / 2  # 10 trials each in the stand-in
    assert f"**{100 * before:.1f}%** | **{100 * after:.1f}%**" in pooled
    assert "(20 / 20 episodes)" in pooled and "states 700-899" in text
    assert rate["eval_sft"] != rate["eval_sft_more"]  # a pooled mean, not either one


def test_world_model_rounds_are_refused_for_a_real_env_experiment(reproduce, tmp_path, capsys):
    module, _ = reproduce
    with pytest.raises(SystemExit):
        module.main(["synthetic", "--root", str(tmp_path), "--wm-rounds", "2"])
    assert "above 1 only for a world-model experiment" in capsys.readouterr().err
