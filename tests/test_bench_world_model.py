"""bench_world_model's reuse of real-env evaluations made elsewhere (``--reuse-evals``,
e.g. the evaluations ``scripts/reproduce.py``'s chains made): one is read only for the
same checkpoint, real env, trials, first state and deterministic actions, complete, and
made after the checkpoint was last written."""

from __future__ import annotations

import dataclasses
import json
import os
import time

from benchmarks.bench_world_model import find_evaluation
from configs import load_config
from tests.conftest import ROOT

CONFIG = "configs/robosuite_lift_world_model.yaml"
ASKED = ["actor.deterministic=true", "eval.num_trials=100", "env.kind=robosuite"]
SPARE = ["actor.deterministic=true", "eval.num_trials=200", "env.kind=robosuite",
         "env.held_out_eval_states=false", "eval.first_state=700"]


def _evaluation(folder, checkpoint, overrides, complete=True, drop_first_state=False):
    """What ``launch.py --eval`` leaves in ``folder`` (the fields the finder reads)."""
    config = dataclasses.asdict(load_config(ROOT / CONFIG, [f"model.checkpoint={checkpoint}",
                                                            *overrides]))
    if drop_first_state:  # saved before eval.first_state existed
        del config["eval"]["first_state"]
    done = folder / "eval" / "eval_results.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"checkpoint": str(checkpoint), "complete": complete,
                                "config": config, "mean_success_rate": 0.4, "tasks": []}))
    return folder


def _checkpoint(path, age_s: float):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_the_same_measurement_of_the_same_checkpoint_is_reused(tmp_path):
    ckpt = _checkpoint(tmp_path / "chain" / "rl2" / "checkpoint.pt", 100)
    other = _checkpoint(tmp_path / "chain" / "rl3" / "checkpoint.pt", 100)
    runs = tmp_path / "runs"
    assert find_evaluation([runs], CONFIG, ckpt, ASKED) is None  # nothing there yet
    _evaluation(runs / "sampled", ckpt, ["actor.deterministic=false", *ASKED[1:]])
    _evaluation(runs / "fewer", ckpt, ["actor.deterministic=true", "eval.num_trials=50",
                                       "env.kind=robosuite"])
    _evaluation(runs / "cut_short", ckpt, ASKED, complete=False)
    _evaluation(runs / "of_rl3", other, ASKED)
    _evaluation(runs / "in_the_world_model", ckpt, [*ASKED[:2], "env.kind=world_model"])
    assert find_evaluation([runs], CONFIG, ckpt, ASKED) is None
    spare = _evaluation(runs / "chain" / "eval700_rl2", ckpt, SPARE)
    assert find_evaluation([runs], CONFIG, ckpt, ASKED) is None
    assert find_evaluation([runs], CONFIG, ckpt, SPARE) == spare
    # the world-model section does not matter to a real env's evaluation
    same = _evaluation(runs / "chain" / "eval_rl2", ckpt,
                       [*ASKED, "env.world_model.checkpoint=elsewhere.pt"])
    assert find_evaluation([runs], CONFIG, ckpt, ASKED) == same
    assert find_evaluation([tmp_path / "nowhere"], CONFIG, ckpt, ASKED) is None


def test_an_evaluation_older_than_its_checkpoint_is_another_policys(tmp_path):
    ckpt = _checkpoint(tmp_path / "rl" / "checkpoint.pt", 100)
    found = _evaluation(tmp_path / "runs" / "eval_rl", ckpt, ASKED)
    assert find_evaluation([tmp_path / "runs"], CONFIG, ckpt, ASKED) == found
    ckpt.write_bytes(b"trained again")  # the chain re-ran: the same path, new weights
    assert find_evaluation([tmp_path / "runs"], CONFIG, ckpt, ASKED) is None


def test_a_config_saved_before_first_state_existed_started_at_state_0(tmp_path):
    ckpt = _checkpoint(tmp_path / "sft" / "checkpoint.pt", 100)
    fifty = ["actor.deterministic=true", "eval.num_trials=50", "env.kind=robosuite"]
    old = _evaluation(tmp_path / "runs" / "eval_sft", ckpt, fifty, drop_first_state=True)
    assert find_evaluation([tmp_path / "runs"], CONFIG, ckpt, fifty) == old
    assert find_evaluation([tmp_path / "runs"], CONFIG, ckpt,
                           [*fifty, "eval.first_state=50"]) is None
