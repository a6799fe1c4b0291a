"""OpenVLA-OFT decoding: the token<->action mapping, parallel decoding on a Qwen2.5-VL,
LoRA adapters, RLinf's keys (OpenVLA's own Prismatic backbone: test_prismatic.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from configs import ModelConfig
from envs.base import EnvObs
from models.action_tokens import CENTRES, actions_to_tokens, bin_index, tokens_to_actions
from models.vla_loading import CheckpointError, load_openvla_oft
from tests.conftest import ROOT, fit
from models.tiny_vla import STATS, check_oft_decoding, make_qwen_vl

CPU = torch.device("cpu")


def test_token_action_mapping_on_known_pairs():
    v = 32000  # OpenVLA's Llama vocabulary
    ids = torch.tensor([v - 256, v - 255, v - 129, v - 128, v - 1, v - 300])
    got = tokens_to_actions(ids, v)
    want = [0.99608, 0.99608, 0.00784, 0.0, -0.99608, 0.99608]  # v-300: k clipped to 254
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert actions_to_tokens(torch.tensor([-1.0, 1.0, 0.0, 5.0]), v).tolist() == [
        v - 1, v - 256, v - 128, v - 256]
    # Every bin centre encodes to the token that decodes to it.
    tokens = torch.arange(v - 255, v)
    assert torch.equal(actions_to_tokens(tokens_to_actions(tokens, v), v), tokens)
    assert len(CENTRES) == 255 and CENTRES[0] == pytest.approx(-0.99608, abs=1e-5)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = make_qwen_vl(tmp_path_factory.mktemp("ovla") / "openvla-oft-tiny")
    (folder / "dataset_statistics.json").write_text(json.dumps(
        {"libero_spatial_no_noops": STATS}))
    return folder


def _obs(b=3, seed=0):
    rng = np.random.default_rng(seed)
    return EnvObs(rng.integers(0, 255, (b, 48, 48, 3), dtype=np.uint8),
                  np.zeros((b, 8), np.float32), ["Pick up the bowl", "open it", "go"][:b])


def _cfg(path, **kw):
    return ModelConfig(**{"kind": "openvla_oft", "model_path": str(path),
                          "use_wrist_image": False, "unnorm_key": "libero_spatial", **kw})


def test_parallel_decoding_shapes_and_logprob_agreement(base):
    policy = load_openvla_oft(_cfg(base, value_head=True))
    inputs = policy.prepare(_obs(), CPU)
    check_oft_decoding(policy, inputs)
    # The prompt ends with the T*D placeholders.
    placeholder = policy.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert bool((inputs["input_ids"][:, -56:] == placeholder).all())


def test_top_k_limits_the_sampled_bins(base):
    policy = load_openvla_oft(_cfg(base, top_k=3))
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        logits = policy._logits(inputs)[0]
        top3 = logits.topk(3, -1).indices + policy.vocab_size - 256
        top3 = actions_to_tokens(tokens_to_actions(top3, policy.vocab_size), policy.vocab_size)
        for seed in range(3):
            torch.manual_seed(seed)
            out = policy.act(inputs, False, 2.0)
            normalised = policy.norm.to_policy(out.actions).flatten(1)
            chosen = actions_to_tokens(normalised, policy.vocab_size)
            assert bool((chosen.unsqueeze(-1) == top3).any(-1).all())


def test_lora_adapter_directory(base, tmp_path):
    from peft import LoraConfig, get_peft_model

    policy = load_openvla_oft(_cfg(base))
    inputs = policy.prepare(_obs(2), CPU)
    with torch.no_grad():
        plain = policy._logits(inputs)[0]
    adapted = get_peft_model(policy.vlm, LoraConfig(r=4, lora_alpha=4,
                                                    target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter is not the identity
    adapted.save_pretrained(tmp_path / "lora_004000")
    policy.vlm = adapted
    with torch.no_grad():
        want = policy._logits(inputs)[0]
    loaded = load_openvla_oft(_cfg(base, lora_path=str(tmp_path / "lora_004000")))
    with torch.no_grad():
        got = loaded._logits(inputs)[0]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain)
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable if n.startswith("vlm."))


def test_loading_errors(base, tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_openvla_oft(_cfg(tmp_path))
    remote = tmp_path / "remote-code"
    shutil.copytree(base, remote)
    conf = json.loads((remote / "config.json").read_text())
    conf.update(model_type="mystery_vla", auto_map={"AutoModel": "modeling_mystery.Model"})
    (remote / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="model_type 'mystery_vla'; OpenVLA-OFT runs on"):
        load_openvla_oft(_cfg(remote))
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_openvla_oft(_cfg(base, lora_path=str(tmp_path)))
    with pytest.raises(ValueError, match="'bridge' is not in"):
        load_openvla_oft(_cfg(base, unnorm_key="bridge"))


def test_rlinf_openvla_keys(tmp_path):
    from configs import ConfigError, load_config

    cfg = load_config(ROOT / "configs/libero_spatial_grpo_openvlaoft.yaml",
                      ["actor.model.num_images_in_input=2"])
    assert cfg.model.kind == "openvla_oft" and cfg.model.use_wrist_image
    assert cfg.model.model_path.endswith("Openvla-oft-SFT-libero-spatial-traj1")
    with pytest.raises(ConfigError, match="use_proprio=true"):
        load_config(ROOT / "configs/libero_spatial_grpo_openvlaoft.yaml",
                    ["actor.model.use_proprio=true"])


def test_the_two_top_bins_are_one_action():
    from models.openvla_oft import OpenVLAOFTPolicy

    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5] + [-1.0] * 253]), -1)
    merged = OpenVLAOFTPolicy._action_logprobs(logp)
    assert merged[0, 1] == pytest.approx(torch.logaddexp(logp[0, 0], logp[0, 1]).item())
    assert torch.equal(merged[0, 2:], logp[0, 2:])
    # Bin 0 and bin 1 decode alike; the action encodes to bin 1.
    v = 300
    ids = torch.tensor([v - 256, v - 255])
    assert torch.equal(actions_to_tokens(tokens_to_actions(ids, v), v), torch.tensor([v - 255] * 2))


def test_behaviour_cloning_loss_is_token_cross_entropy_and_falls(base):
    torch.manual_seed(0)
    policy = load_openvla_oft(_cfg(base))
    inputs = policy.prepare(_obs(2), CPU)
    target = policy.norm.to_env(torch.rand(2, 8, 7) * 1.6 - 0.8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():  # by hand: -log p(target bin), over the unmasked tokens
        logp = policy._logits(inputs)[0].log_softmax(-1)
        bins = bin_index(actions_to_tokens(policy.norm.to_policy(target).flatten(1),
                                           policy.vocab_size), policy.vocab_size)
        nll = -logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1).view(2, 8, 7)
        want = nll[mask].mean()
        assert float(policy.bc_loss(inputs, target, mask)) == pytest.approx(float(want), rel=1e-5)
    losses = fit(lambda: policy.bc_loss(inputs, target, mask), policy.parameters(), 8, 1e-3)
    assert losses[-1] < losses[0] - 0.5
