"""inference.backend=vllm (inference_server/vllm_core.py) against the torch token_ar policy,
on a tiny random Qwen2 saved to a temp dir. Runs where vLLM is installed (`make test` runs
this file in .venv-vllm); elsewhere every test is skipped, with the reason."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from scipy import stats

from configs import ModelConfig, VLLMConfig
from envs.base import EnvObs
from inference_server.batcher import Pending
from models import build_policy
from models.tiny_vla import make_qwen2_lm
from protocol.messages import ActionReply, ObsRequest
from tests.conftest import launch

vllm_core = pytest.importorskip(
    "inference_server.vllm_core", reason="inference_server.vllm_core cannot be imported")
if vllm_core.vllm_missing():
    pytest.skip(vllm_core.vllm_missing(), allow_module_level=True)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_qwen2_lm(tmp_path_factory.mktemp("qwen2") / "lm")


def _cfg(path, **kw) -> ModelConfig:
    return ModelConfig(**{**dict(kind="token_ar", model_path=str(path), unnorm_key="tiny",
                                 action_dim=7, num_action_chunks=2), **kw})


@pytest.fixture(scope="module")
def served(lm_dir):
    """The torch policy and a vLLM core over the same directory. One engine for the whole
    module, as a server has one: vLLM 0.32 sets up its process-wide parallel state once,
    and an engine built after another was freed fails (``pipeline model parallel group
    is not initialized``). Blocks of 32 tokens, so that requests reuse the whole blocks of
    a shared prompt."""
    policy = build_policy(_cfg(lm_dir)).eval()
    core = vllm_core.VLLMCore(policy, str(lm_dir), 1.0, 8, seed=0,
                              engine=VLLMConfig(max_model_len=256, block_size=32))
    return policy, core


@contextlib.contextmanager
def serving(core, policy, temperature=1.0):
    """``core`` serves ``policy`` (its weights loaded) at ``temperature``, then the
    module's policy and weights again."""
    before, before_temperature = core.policy, core.temperature
    core.policy, core.temperature = policy, temperature
    core.load(core.version + 1, {k: v.clone() for k, v in policy.state_dict().items()})
    try:
        yield core
    finally:
        core.policy, core.temperature = before, before_temperature
        core.load(core.version + 1, {k: v.clone() for k, v in before.state_dict().items()})


def _obs(b=3, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["move to the red square", "pick", "go to the blue circle then stop"]
    return EnvObs(np.zeros((b, 16, 16, 3), np.uint8),
                  rng.uniform(-1.2, 1.2, (b, 8)).astype(np.float32), (texts * b)[:b])


def _prompts(policy, obs):
    return [policy.prompt_ids(t, obs.states[i]) for i, t in enumerate(obs.task_descriptions)]


def _torch_logprobs(policy, obs, tokens, temperature):
    with torch.no_grad():
        ev = policy.evaluate(policy.prepare(obs, CPU), policy.decode(tokens), temperature)
    return ev.logprobs.flatten(1)


def test_greedy_tokens_equal_transformers(served):
    policy, core = served
    obs = _obs()
    tokens, _ = core.generate(_prompts(policy, obs), deterministic=True)
    with torch.no_grad():
        det = policy.act(policy.prepare(obs, CPU), True, 1.0)
    assert torch.equal(tokens, policy.stored_tokens(det.actions))


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
def test_sampled_logprobs_agree_with_teacher_forcing(served, temperature):
    policy, core = served
    obs = _obs(6, seed=1)
    core.temperature = temperature
    try:
        tokens, logprobs = core.generate(_prompts(policy, obs), deterministic=False)
    finally:
        core.temperature = 1.0
    assert tokens.shape == logprobs.shape == (6, policy.num_tokens)
    assert set(tokens.flatten().tolist()) <= set(policy.action_ids)  # the sampled bins only
    want = _torch_logprobs(policy, obs, tokens, temperature)
    assert (logprobs - want).abs().max() < 1e-4


def test_sampled_bins_follow_the_processed_softmax(served, lm_dir):
    """10,000 first tokens against softmax(logits / T) over the 255 sampled ids."""
    policy = build_policy(_cfg(lm_dir, num_action_chunks=1, action_dim=2,
                               unnorm_key="")).eval()
    obs = EnvObs(np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 8), np.float32), ["pick"])
    n = 10_000
    with serving(served[1], policy, temperature=1.6) as core:
        tokens, _ = core.generate(_prompts(policy, obs) * n, deterministic=False)
    with torch.no_grad():
        inputs = policy.prepare(obs, CPU)
        h, _, _ = policy._hidden(inputs["input_ids"], inputs["attention_mask"])
        logits = policy._bin_logits(h[:, -1])
    counts = np.bincount((tokens[:, 0] - policy.action_ids[0]).numpy(), minlength=255)

    def pvalue(temperature):
        probs = policy._process(logits, temperature).exp()[0].double().numpy()
        expected = probs * n / probs.sum()
        order = np.argsort(expected)  # rare bins pooled: every expected count >= 5
        cut = max(int(np.searchsorted(np.cumsum(expected[order]), 5.0)), 1)
        observed = np.append(counts[order[cut:]], counts[order[:cut]].sum())
        expect = np.append(expected[order[cut:]], expected[order[:cut]].sum())
        return stats.chisquare(observed, expect).pvalue

    assert pvalue(1.6) > 1e-3
    assert pvalue(0.5) < 1e-3  # the same test tells a wrong temperature apart


def test_reload_changes_outputs_and_restores_them_exactly(served):
    policy, core = served
    obs = _obs()
    prompts = _prompts(policy, obs)
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    before, before_lp = core.generate(prompts, deterministic=True)
    core.load(1, {k: v + 0.05 * torch.randn_like(v) for k, v in original.items()})
    changed, changed_lp = core.generate(prompts, deterministic=True)
    assert not torch.equal(changed_lp, before_lp)
    # What vLLM now serves is what the learner's copy of the new weights scores.
    core.temperature = 1.3
    try:
        tokens, logprobs = core.generate(prompts, deterministic=False)
    finally:
        core.temperature = 1.0
    assert (logprobs - _torch_logprobs(policy, obs, tokens, 1.3)).abs().max() < 1e-4
    core.load(2, original)
    again, again_lp = core.generate(prompts, deterministic=True)
    assert torch.equal(again, before) and torch.equal(again_lp, before_lp)
    assert core.version == 2 and core.reloads >= 2


def test_a_reply_carries_the_loaded_version(served):
    policy, core = served
    obs = _obs(2)
    core.load(7, {k: v.clone() for k, v in policy.state_dict().items()})
    req = ObsRequest(request_id=11, deterministic=False, task_descriptions=obs.task_descriptions,
                     main_images=obs.main_images, states=obs.states)
    [(peer, reply)] = core.answer([Pending(b"actor-0", req)])
    assert isinstance(reply, ActionReply) and peer == b"actor-0"
    assert reply.policy_version == 7 and reply.request_id == 11
    assert reply.actions.shape == reply.logprobs.shape == (2, 2, 7)
    assert np.isfinite(reply.logprobs).all() and (reply.logprobs < 0).all()


def test_lora_is_merged_before_loading(served, lm_dir):
    torch.manual_seed(0)
    policy = build_policy(_cfg(lm_dir, lora_rank=4)).eval()
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    obs = _obs()
    with serving(served[1], policy) as core:
        tokens, logprobs = core.generate(_prompts(policy, obs), deterministic=False)
    assert (logprobs - _torch_logprobs(policy, obs, tokens, 1.0)).abs().max() < 1e-4
    # Without the adapter vLLM's answer would differ: the merge is what made it agree.
    assert (logprobs - _torch_logprobs(served[0], obs, tokens, 1.0)).abs().max() > 1e-3


@pytest.mark.slow
def test_launch_trains_token_ar_served_by_vllm(lm_dir, tmp_path):
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "model.kind": "token_ar", "model.model_path": lm_dir, "model.unnorm_key": "tiny",
        "model.num_action_chunks": 2, "inference.backend": "vllm",
        "inference.vllm.max_model_len": 256, "run.total_updates": 3, "actor.num_actors": 1,
        "actor.envs_per_actor": 4, "actor.group_size": 2, "learner.groups_per_update": 1,
        "learner.micro_batch_size": 8}, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 3 and summary["duplicates"] == 0
    server = json.loads((tmp_path / "run" / "inference-0.json").read_text())
    assert server["policy_version"] == 3 and server["rows"] > 0

