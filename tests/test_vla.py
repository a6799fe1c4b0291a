"""QwenOFT on transformers with tiny random Qwen2.5-VL checkpoints in both layouts."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pytest
import torch
import yaml

from configs import ConfigError, ModelConfig, load_config
from envs.base import EnvObs
from models import build_policy
from models.action_norm import ActionNorm
from models.vla_loading import HEAD_PREFIX, CheckpointError, load_qwen_oft
from tests.conftest import fit, launch
from models.tiny_vla import STATS, make_qwen_vl, make_starvla_run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vla")
    base = make_qwen_vl(root / "Qwen2.5-VL-tiny")
    return base, make_starvla_run(root / "Qwen2.5-VL-OFT-tiny", base)


def _obs(b=3, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return EnvObs(rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8),
                  np.zeros((b, 8), np.float32),
                  ["pick up the black bowl", "open the top drawer", "turn on the stove"][:b],
                  rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8))


def _cfg(path, **kw) -> ModelConfig:
    return ModelConfig(**{"kind": "qwen_oft", "model_path": str(path), **kw})


def test_shapes_and_logprob_agreement(ckpts):
    _, run = ckpts
    policy = load_qwen_oft(_cfg(run, unnorm_key="libero_spatial", value_head=True,
                                binarize_gripper=True))
    inputs = policy.prepare(_obs(), CPU)
    with torch.no_grad():
        out = policy.act(inputs, False, 1.3)
        again = policy.evaluate(inputs, out.actions, 1.3)
        mode = policy.act(inputs, True, 1.0)
    assert out.actions.shape == out.logprobs.shape == (3, 8, 7) and out.values.shape == (3,)
    # The learner's recomputation at the same weights equals the server's, in fp32.
    assert (again.logprobs - out.logprobs).abs().max().item() <= 1e-5
    assert torch.equal(again.values, out.values)
    # Env units: the gripper binarised to {0,1}; other dims inside the q01/q99 bounds.
    assert set(out.actions[..., 6].unique().tolist()) <= {0.0, 1.0}
    low, high = torch.tensor(STATS["action"]["q01"]), torch.tensor(STATS["action"]["q99"])
    assert bool(((out.actions[..., :6] >= low[:6]) & (out.actions[..., :6] <= high[:6])).all())
    # Deterministic mode acts the mean: the same twice, and rows differ with their inputs.
    with torch.no_grad():
        assert torch.equal(mode.actions, policy.act(inputs, True, 1.0).actions)
    assert not torch.equal(mode.actions[0], mode.actions[1])
    assert out.logprobs.dtype == torch.float32


def test_gradients_reach_backbone_head_and_log_std(ckpts):
    _, run = ckpts
    policy = load_qwen_oft(_cfg(run))
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        out = policy.act(inputs, False, 1.0)
    policy.evaluate(inputs, out.actions, 1.0).logprobs.sum().backward()
    for name in ("log_std", "action_model.model.fc2.weight"):
        assert dict(policy.named_parameters())[name].grad.abs().sum() > 0
    backbone = [p.grad for n, p in policy.named_parameters() if "layers.0.self_attn.q_proj" in n]
    assert backbone and backbone[0].abs().sum() > 0
    assert torch.allclose(policy.log_std.detach(), torch.full((7,), -0.5))  # config default


def test_prompt_holds_images_and_action_queries(ckpts):
    _, run = ckpts
    policy = load_qwen_oft(_cfg(run))
    inputs = policy.prepare(_obs(2), CPU)
    ids = inputs["input_ids"]
    tok = policy.tokenizer
    assert (ids == policy.action_token_id).sum(1).tolist() == [8, 8]
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    per_image = (inputs["image_grid_thw"].prod(-1) // 4).tolist()  # merge_size 2
    assert (ids == pad).sum(1).tolist() == [per_image[0] + per_image[1]] * 2
    text = tok.decode(ids[0][inputs["attention_mask"][0].bool()])
    assert text.startswith("<|im_start|>system\n") and "pick up the black bowl Please " \
        "predict the next 8 robot actions: <action>" in text
    assert text.endswith("<|im_start|>assistant\n")
    no_wrist = dataclasses.replace(_obs(2), wrist_images=None)
    with pytest.raises(ValueError, match="wrist"):
        policy.prepare(no_wrist, CPU)


def test_unnormalisation_by_hand(tmp_path):
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({
        "libero_spatial_no_noops": STATS}))
    norm = ActionNorm.from_statistics(tmp_path / "dataset_statistics.json", "libero_spatial",
                                      binarize_gripper=True)
    a = torch.tensor([[-1.0, 0.0, 1.0, 2.0, -0.5, 0.5, 0.7]])
    env = norm.to_env(a)
    # 0.5*(a+1)*(q99-q01)+q01 on the masked dims; the gripper binarised and passed through.
    expected = torch.tensor([[-0.5, 0.0, 0.9, 0.2, -0.05, 0.1, 1.0]])
    torch.testing.assert_close(env, expected)
    torch.testing.assert_close(norm.to_policy(env), torch.tensor(
        [[-1.0, 0.0, 1.0, 1.0, -0.5, 0.5, 1.0]]))  # the projection: clipped, binarised
    minmax = ActionNorm.from_statistics(tmp_path / "dataset_statistics.json",
                                        "libero_spatial_no_noops", kind="minmax")
    torch.testing.assert_close(minmax.to_env(torch.tensor([[0.3] * 7])),
                               torch.tensor([[0.3] * 7]))
    with pytest.raises(ValueError, match="'bridge' is not in .*libero_spatial_no_noops"):
        ActionNorm.from_statistics(tmp_path / "dataset_statistics.json", "bridge")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ActionNorm.from_statistics(tmp_path / "nope.json", "x")


def test_plain_hf_directory_gets_a_fresh_head_with_a_warning(ckpts, caplog):
    base, run = ckpts
    with caplog.at_level(logging.WARNING):
        plain = load_qwen_oft(_cfg(base))
    assert "freshly initialised" in caplog.text
    starvla = load_qwen_oft(_cfg(run))
    saved = torch.load(next((run / "checkpoints").glob("*.pt")), weights_only=True)
    for key, value in starvla.action_model.state_dict().items():
        assert torch.equal(value, saved[HEAD_PREFIX + key])
    assert not torch.equal(plain.action_model.model.fc2.weight,
                           starvla.action_model.model.fc2.weight)
    # A .pt file inside the run is a valid model_path too.
    direct = load_qwen_oft(_cfg(next((run / "checkpoints").glob("*.pt"))))
    assert torch.equal(direct.action_model.model.fc1.weight, starvla.action_model.model.fc1.weight)


def test_loading_errors_name_the_problem(ckpts, tmp_path):
    base, run = ckpts
    with pytest.raises(CheckpointError, match="does not exist"):
        load_qwen_oft(_cfg(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="num_action_chunks=8 but model.num_action_chunks=4"):
        load_qwen_oft(_cfg(run, num_action_chunks=4))
    other = make_starvla_run(tmp_path / "six", base, action_dim=6)
    with pytest.raises(CheckpointError, match="action_dim=6 but model.action_dim=7"):
        load_qwen_oft(_cfg(other))
    cfg_file = other / "config.yaml"
    conf = yaml.safe_load(cfg_file.read_text())
    conf["framework"]["name"] = "QwenGR00T"
    cfg_file.write_text(yaml.safe_dump(conf))
    with pytest.raises(CheckpointError, match="'QwenGR00T'.*builds \\['QwenOFT'\\]"):
        load_qwen_oft(_cfg(other, action_dim=6))
    with pytest.raises(ValueError, match="'bridge' is not in"):
        load_qwen_oft(_cfg(run, unnorm_key="bridge"))
    (tmp_path / "notqwen").mkdir()
    (tmp_path / "notqwen" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "notqwen" / "preprocessor_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        load_qwen_oft(_cfg(tmp_path / "notqwen"))


def test_rlinf_style_keys(tmp_path, ckpts):
    _, run = ckpts
    base = [f"run.log_dir={tmp_path}", "model.kind=qwen_oft"]
    cfg = load_config(None, base + [f"actor.model.model_path={run}",
                                    f"rollout.model.model_path={run}",
                                    "actor.model.unnorm_key=libero_spatial",
                                    "actor.model.starvla.framework_name=QwenOFT",
                                    "actor.model.starvla.expected_action_dim=7",
                                    "actor.model.starvla.expected_num_action_chunks=8"])
    assert cfg.model.model_path == str(run) and cfg.model.unnorm_key == "libero_spatial"
    with pytest.raises(ConfigError, match="rollout.model.model_path.*differs"):
        load_config(None, base + [f"actor.model.model_path={run}",
                                  "rollout.model.model_path=/elsewhere"])
    with pytest.raises(ConfigError, match="expected_num_action_chunks=16"):
        load_config(None, base + [f"model.model_path={run}",
                                  "actor.model.starvla.expected_num_action_chunks=16"])


def test_build_policy_then_chunkrl_checkpoint(ckpts, tmp_path):
    _, run = ckpts
    cfg = _cfg(run, init_log_std=-2.5)
    policy = build_policy(cfg)
    assert torch.allclose(policy.log_std.detach(), torch.full((7,), -2.5))
    with torch.no_grad():
        policy.log_std.fill_(-1.0)
    torch.save({"model": policy.state_dict()}, tmp_path / "checkpoint.pt")
    again = build_policy(dataclasses.replace(cfg, checkpoint=str(tmp_path / "checkpoint.pt")))
    assert torch.allclose(again.log_std.detach(), torch.full((7,), -1.0))


@pytest.mark.slow
def test_launch_trains_tiny_qwen_oft_on_the_synthetic_task(ckpts, tmp_path):
    _, run = ckpts
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "model.kind": "qwen_oft", "model.model_path": run, "model.use_wrist_image": False,
        "model.init_log_std": -2.5, "run.total_updates": 2, "actor.num_actors": 1,
        "actor.envs_per_actor": 4, "actor.group_size": 2, "learner.groups_per_update": 1,
        "env.image_size": 56, "learner.micro_batch_size": 8})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["duplicates"] == 0
    server = json.loads((tmp_path / "run" / "inference-0.json").read_text())
    assert server["policy_version"] == 2 and server["rows"] > 0


@pytest.mark.slow
def test_launch_trains_tiny_qwen_oft_on_libero(ckpts, tmp_path):
    _, run = ckpts
    result = launch(tmp_path, "configs/libero_spatial_grpo_tiny.yaml", **{
        "model.kind": "qwen_oft", "model.model_path": run, "model.use_wrist_image": True,
        "model.unnorm_key": "libero_spatial", "model.init_log_std": -2.5,
        "env.gripper_convention": "starvla", "env.image_size": 64,
        "env.max_episode_steps": 16, "env.synthetic.progress_reward": 0.0, "run.total_updates": 2,
        "actor.num_actors": 1, "actor.envs_per_actor": 4, "actor.group_size": 2,
        "learner.groups_per_update": 1, "learner.micro_batch_size": 8})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["episodes_received"] >= 4


def test_lora_rank_and_gradient_checkpointing_train_the_adapter_only(ckpts):
    _, run = ckpts
    policy = load_qwen_oft(_cfg(run, lora_rank=4, gradient_checkpointing=True))
    policy.train()
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        out = policy.act(inputs, False, 1.0)
    policy.evaluate(inputs, out.actions, 1.0).logprobs.sum().backward()
    params = dict(policy.named_parameters())
    lora = [n for n in params if "lora_" in n]
    frozen = [n for n in params if n.startswith("vlm.") and "lora_" not in n]
    assert lora and frozen
    assert all(not params[n].requires_grad and params[n].grad is None for n in frozen)
    assert any(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in lora)
    assert params["action_model.model.fc2.weight"].grad.abs().sum() > 0
    base = policy.vlm.get_base_model()
    assert base.is_activation_checkpointing


def test_on_device_patchify_equals_the_image_processor(ckpts):
    from models.qwen_oft import patchify_on_device

    _, run = ckpts
    processor = load_qwen_oft(_cfg(run)).image_processor
    images = np.random.default_rng(3).integers(0, 255, (3, 2, 56, 56, 3), dtype=np.uint8)
    fast = patchify_on_device([images[:, 0], images[:, 1]], processor, CPU)
    ref = processor(images=[images[i, j] for i in range(3) for j in range(2)],
                    return_tensors="pt")
    assert fast["pixel_values"].shape == ref["pixel_values"].shape == (6 * 16, 1176)
    torch.testing.assert_close(fast["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(fast["image_grid_thw"], ref["image_grid_thw"])
    # A size the processor resizes (48 is not a multiple of 28) is left to the processor.
    assert patchify_on_device([images[:, 0, :48, :48]], processor, CPU) is None


def test_rlinf_starvla_section_names_the_model_and_conventions_are_checked(tmp_path, ckpts):
    _, run = ckpts
    base = [f"run.log_dir={tmp_path}", f"actor.model.model_path={run}"]
    cfg = load_config(None, base + ["actor.model.starvla.framework_name=QwenOFT"])
    assert cfg.model.kind == "qwen_oft"
    assert load_config(None, base + ["actor.model.model_type=starvla"]).model.kind == "qwen_oft"
    with pytest.raises(ConfigError, match="model.kind=cnn_gaussian"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="env.gripper_convention=starvla"):
        load_config(None, base + ["model.kind=qwen_oft", "env.kind=libero"])


@pytest.mark.parametrize("layout", ["action", "abs", "flat"])
def test_statistics_layouts(tmp_path, layout):
    entry = {"action": STATS, "abs": {"action": STATS["action"]},
             "flat": STATS["action"]}[layout]
    entry = STATS if layout == "action" else entry
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"franka": entry}))
    norm = ActionNorm.from_statistics(tmp_path / "dataset_statistics.json", "franka")
    assert norm.high[2].item() == pytest.approx(0.9)


def test_starvla_cot_prompt_wraps_the_instruction(ckpts, tmp_path):
    base, _ = ckpts
    run = make_starvla_run(tmp_path / "cot", base,
                           cot_prompt="Your task is {instruction} Think about the objects.")
    policy = load_qwen_oft(_cfg(run))
    inputs = policy.prepare(_obs(1), CPU)
    text = policy.tokenizer.decode(inputs["input_ids"][0])
    assert "Your task is pick up the black bowl Please predict the next 8 robot actions: " \
        "<action>" in text and text.count("Think about the objects.") == 1


def test_behaviour_cloning_loss_is_l1_in_the_normalised_space_and_falls(ckpts):
    torch.manual_seed(0)
    _, run = ckpts
    policy = build_policy(_cfg(run, unnorm_key="libero_spatial"))
    inputs = policy.prepare(_obs(2), CPU)
    target = policy.norm.to_env(torch.rand(2, 8, 7) * 1.6 - 0.8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():
        mean = policy._heads(inputs)[0]  # the head's chunk, normalised (before clamping)
        want = (mean - policy.norm.to_policy(target)).abs().mean()
        assert float(policy.bc_loss(inputs, target, mask)) == pytest.approx(float(want), rel=1e-4)
    with pytest.raises(ValueError, match="own L1"):
        policy.bc_loss(inputs, target, mask, "mse")
    losses = fit(lambda: policy.bc_loss(inputs, target, mask), policy.parameters(), 8, 1e-3)
    assert losses[-1] < 0.7 * losses[0]


def test_a_lora_model_syncs_its_adapter_only_and_serves_as_after_a_full_sync(ckpts, small_cfg):
    from inference_server.core import InferenceCore
    from links.rendezvous import Registry
    from links.weight_hub import WeightHub
    from links.weights import DistWeightReceiver, join_group, state_bytes, synced_state
    from protocol.messages import Register

    _, run = ckpts
    torch.manual_seed(0)
    learner = load_qwen_oft(_cfg(run, lora_rank=4))
    torch.manual_seed(1)  # the server's adapter starts elsewhere: only the sync aligns them
    server = load_qwen_oft(_cfg(run, lora_rank=4)).eval()
    with torch.no_grad():  # "training": the adapter and the action head move
        for p in learner.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    sent, full = synced_state(learner), learner.state_dict()
    assert any("lora_" in k for k in sent) and "action_model.model.fc2.weight" in sent
    assert not any(k.endswith("base_layer.weight") for k in sent)  # the frozen base stays
    assert state_bytes(sent) < state_bytes(full)

    registry = Registry(small_cfg)  # a real two-rank gloo group, as in a run
    hub = WeightHub(small_cfg, CPU, registry)
    problem, generation, _ = registry.register(Register("inference", 0, 0, "x", -1))
    assert problem == ""
    receiver = DistWeightReceiver(
        server, CPU, lambda layout: join_group(small_cfg, 0, generation, CPU, layout))
    for _ in range(600):
        hub.admit(0, learner)
        if hub.joined:
            break
        time.sleep(0.05)
    version, state = receiver.wait_first(30)
    assert version == 0 and set(state) == set(sent)
    InferenceCore(server, CPU, 1.0, 8).load(version, state)
    hub.close()

    reference = load_qwen_oft(_cfg(run, lora_rank=4)).eval()
    reference.load_state_dict(full)  # what a full sync would have served
    learner.eval()
    inputs = server.prepare(_obs(), CPU)
    with torch.no_grad():
        got = server.act(inputs, True, 1.0).actions
        want = reference.act(inputs, True, 1.0).actions
        ours = learner.act(learner.prepare(_obs(), CPU), True, 1.0).actions
    assert torch.equal(got, want) and torch.equal(got, ours)
