"""OpenVLA's Prismatic checkpoints: loading without remote code, the featurizers against
transformers' DINOv2/SigLIP, the multimodal sequence against an unpadded reference, LoRA
adapters, errors, and launches on the synthetic task and on LIBERO."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from configs import ModelConfig
from envs.base import EnvObs
from models.action_tokens import NUM_BINS
from models.prismatic import EMPTY_TOKEN, ImageTransform
from models.vla_loading import CheckpointError, load_openvla_oft
from tests.conftest import launch
from models.tiny_prismatic import BASE_VOCAB, make_prismatic
from models.tiny_vla import STATS, check_oft_decoding

CPU = torch.device("cpu")
TASKS = ["Pick up the black bowl", "open the drawer", "go"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_prismatic(tmp_path_factory.mktemp("prismatic") / "openvla-oft-tiny")


def _cfg(path, **kw):
    return ModelConfig(**{"kind": "openvla_oft", "model_path": str(path),
                          "use_wrist_image": False, "unnorm_key": "libero_spatial", **kw})


def _obs(b=3, size=56, seed=0, wrist=False):
    rng = np.random.default_rng(seed)
    images = lambda: rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8)  # noqa: E731
    return EnvObs(images(), np.zeros((b, 8), np.float32), TASKS[:b],
                  wrist_images=images() if wrist else None)


def test_featurizers_equal_transformers_dinov2_and_siglip(tiny):
    vision = load_openvla_oft(_cfg(tiny.path)).vlm.vision_backbone
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        dino = tiny.dino(pixel_values=x, output_hidden_states=True).hidden_states
        siglip = tiny.siglip(pixel_values=x, output_hidden_states=True).hidden_states
        got_dino, got_siglip = vision.featurizer(x), vision.fused_featurizer(x)
    # Prismatic reads the second-to-last block, prefix tokens (CLS + 4 registers) dropped.
    torch.testing.assert_close(got_dino, dino[-2][:, 5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_siglip, siglip[-2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got_dino, dino[-1][:, 5:], atol=1e-3)
    assert vision.num_patches == 16 and vision.embed_dim == 64 + 48


def test_the_sequence_and_logits_equal_an_unpadded_reference(tiny):
    """Each padded row gives what its own [BOS][patches][prompt][zeros] sequence gives,
    and the action logits are RLinf's slice of the full LM logits."""
    policy = load_openvla_oft(_cfg(tiny.path))
    vlm, n = policy.vlm, policy.num_tokens
    inputs = policy.prepare(_obs(), CPU)
    with torch.no_grad():
        logits = policy._logits(inputs)[0]
        embed = vlm.language_model.get_input_embeddings()
        for i, text in enumerate(TASKS):
            ids = torch.tensor(policy.inputs.prompt_ids(text))
            patches = vlm.projector(vlm.vision_backbone(inputs["pixel_values"][i:i + 1]))
            seq = torch.cat([embed(ids[:1])[None], patches, embed(ids[1:])[None],
                             torch.zeros(1, n, patches.shape[-1])], dim=1)
            full = vlm.language_model(inputs_embeds=seq).logits[0]
            start = patches.shape[1] + len(ids) - 1  # RLinf: n_patches + n_prompt_tokens
            want = full[start:start + n, BASE_VOCAB - NUM_BINS:BASE_VOCAB]
            torch.testing.assert_close(logits[i], want, atol=1e-4, rtol=1e-4)
    assert policy.vocab_size == BASE_VOCAB  # the LM's 704 ids less pad_to_multiple_of


def test_prompt_is_openvlas(tiny):
    policy = load_openvla_oft(_cfg(tiny.path))
    tok, io = policy.tokenizer, policy.inputs
    ids = io.prompt_ids("Pick Up The Bowl")
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[-1]) == EMPTY_TOKEN
    assert tok.decode(ids[1:], skip_special_tokens=True).strip() == \
        "In: What action should the robot take to pick up the bowl?\nOut:"
    inputs = policy.prepare(_obs(), CPU)
    assert bool(inputs["placeholder"][:, -56:].all()) and \
        int(inputs["placeholder"].sum()) == 3 * 56
    assert bool((inputs["tail_mask"][:, -57:] == 1).all())  # "▁" + placeholders, no pad
    assert inputs["pixel_values"].shape == (3, 6, 56, 56)  # DINOv2 + SigLIP copies


def test_decoding_shapes_logprob_agreement_and_statistics(tiny):
    policy = load_openvla_oft(_cfg(tiny.path, value_head=True, use_wrist_image=True))
    assert policy.vlm.vision_backbone.num_patches == 32  # two images
    inputs = policy.prepare(_obs(wrist=True, size=64), CPU)  # resized to 56
    assert inputs["pixel_values"].shape == (3, 12, 56, 56)
    check_oft_decoding(policy, inputs)
    assert policy.vocab_size == BASE_VOCAB


def test_statistics_from_config_norm_stats(tiny, tmp_path):
    folder = shutil.copytree(tiny.path, tmp_path / "no-stats-file")
    (folder / "dataset_statistics.json").unlink()
    policy = load_openvla_oft(_cfg(folder))
    torch.testing.assert_close(policy.norm.low, torch.tensor(STATS["action"]["q01"]))


def test_lora_adapter_over_vision_projector_and_llm(tiny, tmp_path):
    """An adapter over every linear layer of the three parts (OpenVLA-OFT's all-linear,
    SigLIP's unused MAP head included), saved with a task type, loads via lora_path."""
    from peft import LoraConfig, get_peft_model

    policy = load_openvla_oft(_cfg(tiny.path))
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        plain = policy._logits(inputs)[0]
    targets = ["q_proj", "v_proj", "qkv", "fc1", "fc2", "fc3", "proj", "q", "kv"]
    adapted = get_peft_model(policy.vlm, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert any("fused_featurizer.attn_pool.kv" in n for n, _ in adapted.named_parameters())
    adapted.save_pretrained(tmp_path / "lora_004000")
    config = tmp_path / "lora_004000" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "task_type": "CAUSAL_LM"}))
    policy.vlm = adapted
    with torch.no_grad():
        want = policy._logits(inputs)[0]
    loaded = load_openvla_oft(_cfg(tiny.path, lora_path=str(tmp_path / "lora_004000")))
    with torch.no_grad():
        got = loaded._logits(inputs)[0]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_new_lora_rank_with_checkpointing_trains_all_three_parts(tiny):
    policy = load_openvla_oft(_cfg(tiny.path, lora_rank=2, gradient_checkpointing=True))
    policy.train()
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        actions = policy.act(inputs, False, 1.0).actions
    policy.evaluate(inputs, actions, 1.0).logprobs.sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in grads)
    for part in ("vision_backbone.featurizer.blocks.0.attn.qkv", "projector.fc1",
                 "language_model.model.layers.0.self_attn.q_proj"):
        got = [g for n, g in grads.items() if part in n and "lora_B" in n]
        assert got and got[0] is not None and float(got[0].abs().sum()) > 0, part
    assert policy.vlm.get_base_model().language_model.is_gradient_checkpointing


def _edit_config(folder, **changes):
    conf = json.loads((folder / "config.json").read_text())
    conf.update(changes)
    (folder / "config.json").write_text(json.dumps(conf))


def test_loading_errors_name_the_problem(tiny, tmp_path):
    broken = shutil.copytree(tiny.path, tmp_path / "missing-shard")
    (broken / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shards that do not exist"):
        load_openvla_oft(_cfg(broken))
    family = shutil.copytree(tiny.path, tmp_path / "family")
    _edit_config(family, timm_model_ids=["eva02_large_patch14", "vit_so400m_patch14_siglip_224"])
    with pytest.raises(CheckpointError, match="knows the ViT families"):
        load_openvla_oft(_cfg(family))
    sizes = shutil.copytree(tiny.path, tmp_path / "sizes")
    _edit_config(sizes, image_sizes=[224, 224])
    with pytest.raises(CheckpointError, match="pos_embed has 16 positions"):
        load_openvla_oft(_cfg(sizes))
    single = shutil.copytree(tiny.path, tmp_path / "single")
    _edit_config(single, use_fused_vision_backbone=False)
    with pytest.raises(CheckpointError, match="does not match use_fused_vision_backbone"):
        load_openvla_oft(_cfg(single))
    bins = shutil.copytree(tiny.path, tmp_path / "bins")
    _edit_config(bins, n_action_bins=128)
    with pytest.raises(CheckpointError, match="n_action_bins is 128"):
        load_openvla_oft(_cfg(bins))


def test_weights_that_do_not_fit_are_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny.path, tmp_path / "extra")
    shard = folder / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    tensors["projector.fc4.weight"] = torch.zeros(2, 2)
    del tensors["projector.fc3.bias"]
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"missing \['projector.fc3.bias'\], "
                                              r"unexpected \['projector.fc4.weight'\]"):
        load_openvla_oft(_cfg(folder))


def test_image_resize_is_within_one_level_of_pil():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((64, 64), Image.BILINEAR))
    want = np.asarray(Image.fromarray(image).resize((56, 56), Image.BICUBIC), np.float32)
    transform = ImageTransform((56, 56), (56, 56), (0.0,) * 3, (1.0,) * 3)
    got = transform(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0]
    diff = np.abs(got.permute(1, 2, 0).numpy() * 255 - want)
    assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.5


@pytest.mark.slow
def test_launch_trains_tiny_openvla_oft(tiny, tmp_path):
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "model.kind": "openvla_oft", "model.model_path": tiny.path,
        "model.use_wrist_image": False, "model.unnorm_key": "", "run.total_updates": 2,
        "actor.num_actors": 1, "actor.envs_per_actor": 4, "actor.group_size": 2,
        "learner.groups_per_update": 1, "env.image_size": 56,
        "learner.micro_batch_size": 8, "inference.temperature": 1.6})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["duplicates"] == 0


@pytest.mark.slow
def test_launch_trains_tiny_openvla_oft_on_libero(tiny, tmp_path):
    result = launch(tmp_path, "configs/libero_spatial_grpo_tiny.yaml", **{
        "model.kind": "openvla_oft", "model.model_path": tiny.path,
        "model.use_wrist_image": False, "model.unnorm_key": "libero_spatial",
        "env.gripper_convention": "openvla", "env.wrist_camera": False,
        "env.image_size": 64, "env.max_episode_steps": 16, "env.synthetic.progress_reward": 0.0,
        "run.total_updates": 2, "actor.num_actors": 1, "actor.envs_per_actor": 4,
        "actor.group_size": 2, "learner.groups_per_update": 1,
        "learner.micro_batch_size": 8, "inference.temperature": 1.6})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["episodes_received"] >= 4
