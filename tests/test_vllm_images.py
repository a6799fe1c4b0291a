"""inference.backend=vllm with images: token_ar over a tiny random Qwen2.5-VL (the main and
wrist cameras in each prompt), served by vLLM's own Qwen2.5-VL against the torch policy
that the learner scores with. Runs where vLLM is installed (`make test` runs this file in
.venv-vllm); elsewhere every test is skipped, with the reason."""

from __future__ import annotations

import pytest
import torch

from configs import ModelConfig, VLLMConfig
from envs.base import EnvObs
from models import build_policy
from models.tiny_vla import make_qwen_vl
from tests.conftest import vl_obs

vllm_core = pytest.importorskip(
    "inference_server.vllm_core", reason="inference_server.vllm_core cannot be imported")
if vllm_core.vllm_missing():
    pytest.skip(vllm_core.vllm_missing(), allow_module_level=True)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The torch policy and a vLLM core over the same Qwen2.5-VL directory (56x56 images:
    4 tokens each)."""
    path = make_qwen_vl(tmp_path_factory.mktemp("qwen_vl") / "vl", hidden=128,
                        max_pixels=56 * 56, action_bins=True)
    cfg = ModelConfig(kind="token_ar", model_path=str(path), unnorm_key="tiny", action_dim=7,
                      num_action_chunks=2, use_wrist_image=True)
    policy = build_policy(cfg).eval()
    core = vllm_core.VLLMCore(policy, str(path), 1.0, 8, seed=0,
                              engine=VLLMConfig(max_model_len=256))
    return policy, core


def _generate(core, obs, deterministic):
    actions, logprobs, _ = core.infer(obs, deterministic)
    return torch.from_numpy(actions), torch.from_numpy(logprobs)


def test_greedy_actions_equal_transformers(served):
    policy, core = served
    obs = vl_obs()
    actions, _ = _generate(core, obs, deterministic=True)
    with torch.no_grad():
        det = policy.act(policy.prepare(obs, CPU), True, 1.0)
    assert torch.equal(policy.stored_tokens(actions), policy.stored_tokens(det.actions))


@pytest.mark.parametrize("temperature", [0.7, 1.6])
def test_sampled_logprobs_agree_with_teacher_forcing(served, temperature):
    """The images change the answer (a row's images swapped give other log-probs), and
    what vLLM sampled, the learner's teacher forcing scores the same."""
    policy, core = served
    obs = vl_obs(4, seed=1)
    core.temperature = temperature
    try:
        actions, logprobs = _generate(core, obs, deterministic=False)
    finally:
        core.temperature = 1.0
    with torch.no_grad():
        want = policy.evaluate(policy.prepare(obs, CPU), actions, temperature).logprobs
        other = EnvObs(obs.main_images[::-1].copy(), obs.states, obs.task_descriptions,
                       wrist_images=obs.wrist_images[::-1].copy())
        swapped = policy.evaluate(policy.prepare(other, CPU), actions, temperature).logprobs
    assert (logprobs - want).abs().max() < 1e-4
    assert (swapped - want).abs().max() > 1e-3


def test_reload_reaches_the_vision_tower(served):
    """New weights of the vision tower alone change vLLM's answer, and what it then
    samples the torch copy scores the same."""
    policy, core = served
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    obs = vl_obs()
    _, before = _generate(core, obs, deterministic=True)
    changed = {k: (v + 0.1 * torch.randn_like(v) if ".visual." in k else v.clone())
               for k, v in original.items()}
    assert any(".visual." in k for k in original)
    core.load(1, changed)
    try:
        actions, logprobs = _generate(core, obs, deterministic=False)
        with torch.no_grad():
            want = policy.evaluate(policy.prepare(obs, CPU), actions, 1.0).logprobs
        _, after = _generate(core, obs, deterministic=True)
    finally:
        core.load(2, original)
    assert (logprobs - want).abs().max() < 1e-4
    assert not torch.equal(after, before)
