"""``launch.py export``: a trained policy written in the layout it was loaded from, loaded
back by the same loaders a user's tools use, acting as the trained one did."""

from __future__ import annotations

import json

import numpy as np
import torch

from configs import ModelConfig, load_config, to_dict
from envs.base import EnvObs
from launch import main as launch_main
from models import build_policy
from models.tiny_prismatic import make_prismatic
from models.tiny_vla import make_qwen_vl, make_starvla_run
from models.vla_loading import load_openvla_oft, load_qwen_oft

CPU = torch.device("cpu")


def _obs(size: int, b: int = 3) -> EnvObs:
    rng = np.random.default_rng(0)
    return EnvObs(rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8),
                  np.zeros((b, 8), np.float32), ["pick up the black bowl", "open it", "go"][:b],
                  rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8))


def _trained_run(folder, overrides: list[str], version: int = 7):
    """A run folder whose checkpoint.pt holds a policy of ``overrides`` with its trainable
    weights moved (as training would), and that policy."""
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True)
    torch.save({"model": policy.state_dict(), "config": to_dict(cfg)}, folder / "checkpoint.pt")
    (folder / "checkpoint.json").write_text(json.dumps({"version": version}))
    return policy.eval()


def _export(run, out) -> None:
    assert launch_main(["export", str(run), str(out)]) == 0


def _actions(policy, size: int) -> torch.Tensor:
    with torch.no_grad():
        return policy.act(policy.prepare(_obs(size), CPU), True, 1.0).actions


def test_qwen_oft_with_lora_exports_a_starvla_run_that_acts_the_same(tmp_path):
    base = make_qwen_vl(tmp_path / "Qwen2.5-VL-tiny")
    source = make_starvla_run(tmp_path / "starvla", base)
    trained = _trained_run(tmp_path / "run", [
        "model.kind=qwen_oft", f"model.model_path={source}", "model.lora_rank=4",
        "model.unnorm_key=libero_spatial"])
    _export(tmp_path / "run", tmp_path / "out")
    assert (tmp_path / "out" / "checkpoints" / "steps_7_pytorch_model.pt").is_file()
    back = load_qwen_oft(ModelConfig(kind="qwen_oft", model_path=str(tmp_path / "out"),
                                     unnorm_key="libero_spatial")).eval()
    # LoRA merged into the backbone: the same function up to float rounding
    torch.testing.assert_close(_actions(back, 48), _actions(trained, 48), atol=1e-4, rtol=0)
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["version"] == 7 and info["left_out"] == ["log_std", "value_head"]


def test_openvla_oft_with_lora_exports_its_adapter(tmp_path):
    tiny = make_prismatic(tmp_path / "openvla-oft-tiny")
    common = {"kind": "openvla_oft", "model_path": str(tiny.path), "use_wrist_image": False,
              "unnorm_key": "libero_spatial"}
    trained = _trained_run(tmp_path / "run", [f"model.{k}={v}" for k, v in common.items()]
                           + ["model.lora_rank=4", "env.gripper_convention=openvla"])
    _export(tmp_path / "run", tmp_path / "out")
    adapter = tmp_path / "out" / "lora_adapter"
    assert (adapter / "adapter_config.json").is_file()
    back = load_openvla_oft(ModelConfig(**common, lora_path=str(adapter))).eval()
    assert torch.equal(_actions(back, 56), _actions(trained, 56))


def test_the_small_policy_exports_its_own_checkpoint(tmp_path):
    trained = _trained_run(tmp_path / "run", ["env.image_size=32",
                                              "model.cnn.image_resolution=32"])
    _export(tmp_path / "run", tmp_path / "out")
    cfg = load_config(None, ["model.cnn.image_resolution=32",
                             f"model.checkpoint={tmp_path / 'out' / 'checkpoint.pt'}"])
    back = build_policy(cfg.model).eval()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                 trained.state_dict().values()))


def test_what_cannot_be_exported_says_why(tmp_path, capsys):
    assert launch_main(["export", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    _trained_run(tmp_path / "run", ["env.image_size=32", "model.cnn.image_resolution=32"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert launch_main(["export", str(tmp_path / "run"), str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert launch_main(["export", str(tmp_path / "run")]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_fully_fine_tuned_openvla_oft_is_refused(tmp_path, capsys):
    tiny = make_prismatic(tmp_path / "openvla-oft-tiny")
    _trained_run(tmp_path / "run", ["model.kind=openvla_oft", f"model.model_path={tiny.path}",
                                    "model.use_wrist_image=false",
                                    "model.unnorm_key=libero_spatial",
                                    "env.gripper_convention=openvla"])
    assert launch_main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    assert "without LoRA" in capsys.readouterr().err
