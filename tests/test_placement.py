"""The placement plan: which GPUs each role process sees (CUDA_VISIBLE_DEVICES per child),
automatic and by hand, its refusals, and the launcher handing it to real children."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from configs import load_config
from launcher.placement import PlacementError, make_plan, visible_gpus
from tests.conftest import ROOT, small_overrides


def _cfg(tmp_path, *extra):
    return load_config(ROOT / "configs" / "synthetic_grpo.yaml",
                       small_overrides(tmp_path) + list(extra))


def _slots(servers: int, actors: int = 2):
    return [("learner", 0)] + [("inference", i) for i in range(servers)] + \
        [("actor", k) for k in range(actors)]


def _gpus(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def test_no_gpu_puts_every_role_on_the_cpu(tmp_path):
    plan = make_plan(_cfg(tmp_path), _slots(1), [])
    assert set(plan.slots.values()) == {()}
    assert plan.describe() == "placement: no GPU on this host, every role on the CPU"


def test_one_gpu_is_shared_by_the_learner_and_the_servers(tmp_path):
    plan = make_plan(_cfg(tmp_path, "inference.num_servers=2"), _slots(2), _gpus(1))
    assert plan.slots == {"learner-0": (0,), "inference-0": (0,), "inference-1": (0,),
                          "actor-0": (), "actor-1": ()}
    assert plan.visible_devices("inference-1") == "0" and plan.visible_devices("actor-0") == ""


def test_eight_gpus_learner_first_servers_on_the_next(tmp_path):
    plan = make_plan(_cfg(tmp_path, "inference.num_servers=3"), _slots(3, actors=8), _gpus(8))
    assert [plan.slots[f"inference-{i}"] for i in range(3)] == [(1,), (2,), (3,)]
    assert plan.slots["learner-0"] == (0,)
    text = plan.describe()
    assert "GPU 0: learner-0" in text and "GPU 3: inference-2" in text
    assert "GPU 7: (unused)" in text and "actor-0..actor-7 (8 actors)" in text


def test_learner_ranks_take_one_gpu_each_and_servers_the_rest(tmp_path):
    cfg = _cfg(tmp_path, "learner.num_ranks=4", "inference.num_servers=2")
    plan = make_plan(cfg, [("learner", r) for r in range(4)] + _slots(2)[1:], _gpus(8))
    assert [plan.slots[f"learner-{r}"] for r in range(4)] == [(0,), (1,), (2,), (3,)]
    assert [plan.slots[f"inference-{i}"] for i in range(2)] == [(4,), (5,)]
    with pytest.raises(PlacementError, match=r"4 learner ranks \(learner.num_ranks\) need a "
                       "GPU each, but this host has 2"):
        make_plan(cfg, [("learner", r) for r in range(4)], _gpus(2))
    # one rank per host (--role learner --index 3): that host's first GPU
    assert make_plan(cfg, [("learner", 3)], _gpus(1)).slots == {"learner-3": (0,)}
    cfg = _cfg(tmp_path, "learner.num_ranks=2", "placement.learner=[1,1]")
    with pytest.raises(PlacementError, match="two learner ranks on one GPU"):
        make_plan(cfg, [("learner", 0), ("learner", 1)], _gpus(2))


def test_more_servers_than_free_gpus_go_round_robin(tmp_path):
    plan = make_plan(_cfg(tmp_path, "inference.num_servers=3"), _slots(3), _gpus(3))
    assert [plan.slots[f"inference-{i}"] for i in range(3)] == [(1,), (2,), (1,)]


def test_a_host_without_the_learner_gives_its_servers_every_gpu(tmp_path):
    cfg = _cfg(tmp_path, "inference.num_servers=4")  # --role inference --index 3 on a host
    assert make_plan(cfg, [("inference", 3)], _gpus(8)).slots == {"inference-3": (3,)}
    assert make_plan(cfg, [("inference", 3)], _gpus(1)).slots == {"inference-3": (0,)}


def test_gpus_by_hand_and_the_launchers_own_visible_list(tmp_path):
    cfg = _cfg(tmp_path, "inference.num_servers=2", "placement.learner=[1]",
               "placement.inference=[0,0]")
    plan = make_plan(cfg, _slots(2), visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 6"}))
    assert plan.visible_devices("learner-0") == "6"  # index 1 of the launcher's GPUs
    assert plan.visible_devices("inference-1") == "4"
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_cpu_device_gets_no_gpu_and_a_cuda_world_model_env_gives_actors_one(tmp_path):
    plan = make_plan(_cfg(tmp_path, "learner.device=cpu"), _slots(1), _gpus(2))
    assert plan.slots["learner-0"] == () and plan.slots["inference-0"] == (0,)
    cfg = _cfg(tmp_path, "env.kind=world_model", "env.world_model.device=cuda",
               "model.cnn.read_state=false",
               "env.world_model.checkpoint=wm.pt", "env.world_model.reset_data=[data]")
    plan = make_plan(cfg, _slots(1, actors=3), _gpus(3))
    assert [plan.slots[f"actor-{k}"] for k in range(3)] == [(1,), (2,), (1,)]


@pytest.mark.parametrize("extra, gpus, message", [
    (["network.weights_backend=nccl"], 1,
     "learner-0 and inference-0 on GPU 0 with network.weights_backend=nccl"),
    (["placement.inference=[2]"], 2, "names GPU 2, but this host has 2 (indices 0..1)"),
    (["inference.num_servers=2", "placement.inference=[1]"], 2,
     "1 GPU(s) for 2 inference servers"),
    (["inference.device=cuda"], 0, "inference.device=cuda, but this host has no GPU"),
])
def test_impossible_plans_are_refused_with_the_key_to_change(tmp_path, extra, gpus, message):
    cfg = _cfg(tmp_path, *extra)
    with pytest.raises(PlacementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_plan(cfg, _slots(cfg.inference.num_servers), _gpus(gpus))


def test_nccl_between_different_gpus_is_allowed(tmp_path):
    plan = make_plan(_cfg(tmp_path, "network.weights_backend=nccl"), _slots(1), _gpus(2))
    assert plan.slots["inference-0"] == (1,)


def _launch(tmp_path, visible: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config",
           str(ROOT / "configs" / "synthetic_grpo.yaml"), *small_overrides(tmp_path),
           "run.total_updates=1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)


@pytest.mark.slow
def test_the_launcher_gives_each_child_its_gpus(tmp_path):
    # No GPU here: the children's torch finds no CUDA behind the names and runs on the CPU,
    # but each sees the CUDA_VISIBLE_DEVICES the plan gave it.
    proc = _launch(tmp_path, "5,6", "inference.num_servers=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GPU 5: learner-0" in proc.stdout and "GPU 6: inference-0" in proc.stdout
    run = tmp_path / "run"
    assert "learner 0: CUDA_VISIBLE_DEVICES='5'" in (run / "learner-0.log").read_text()
    assert "inference 0: CUDA_VISIBLE_DEVICES='6'" in (run / "inference-0.log").read_text()
    assert "actor 0: CUDA_VISIBLE_DEVICES=''" in (run / "actor-0.log").read_text()


def test_the_launcher_refuses_nccl_on_one_gpu_before_starting_anything(tmp_path):
    proc = _launch(tmp_path, "3", "network.weights_backend=nccl")
    assert proc.returncode == 2
    assert "NCCL refuses two ranks of one group on one GPU" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "pids.json").exists()  # no child was started
