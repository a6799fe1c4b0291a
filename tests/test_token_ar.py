"""The autoregressive action-token policy (models/token_ar.py) on the torch backend, with
a tiny random Qwen2 causal LM saved to a temp dir."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from configs import ConfigError, ModelConfig, load_config
from envs.base import EnvObs
from models import build_policy
from models.action_tokens import NUM_BINS
from models.tiny_vla import make_qwen2_lm, make_qwen_vl
from models.token_ar import SAMPLED_BINS
from models.vla_loading import CheckpointError
from tests.conftest import ROOT, fit, launch, vl_obs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_qwen2_lm(tmp_path_factory.mktemp("qwen2") / "lm")


def _policy(path, **kw):
    cfg = dict(kind="token_ar", model_path=str(path), unnorm_key="tiny", action_dim=7,
               num_action_chunks=2)
    cfg.update(kw)
    return build_policy(ModelConfig(**cfg)).eval()


def _obs(b=3, seed=0):
    rng = np.random.default_rng(seed)
    texts = ["move to the red square", "pick", "go to the blue circle then stop"]
    return EnvObs(np.zeros((b, 16, 16, 3), np.uint8),
                  rng.uniform(-1.2, 1.2, (b, 8)).astype(np.float32), (texts * b)[:b])


@pytest.mark.parametrize("temperature,top_k", [(0.7, 0), (1.0, 0), (1.6, 0), (1.0, 20)])
def test_teacher_forcing_recomputes_the_sampled_logprobs(lm_dir, temperature, top_k):
    torch.manual_seed(0)
    policy = _policy(lm_dir, top_k=top_k)
    inputs = policy.prepare(_obs(), CPU)
    with torch.no_grad():
        out = policy.act(inputs, False, temperature)
        ev = policy.evaluate(inputs, out.actions, temperature)
    assert out.actions.shape == out.logprobs.shape == (3, 2, 7)
    assert torch.allclose(ev.logprobs, out.logprobs, atol=1e-5)
    assert (out.logprobs < 0).all() and (ev.entropy > 0).all()
    # The actions map back to the tokens the policy fed itself, every one a sampled id.
    tokens = policy.stored_tokens(out.actions)
    assert tokens.min() >= policy.vocab_size - SAMPLED_BINS and tokens.max() < policy.vocab_size
    again = policy.decode(tokens)
    assert torch.equal(again, out.actions)


def test_left_padding_changes_nothing(lm_dir):
    policy = _policy(lm_dir)
    obs = _obs()
    with torch.no_grad():
        det = policy.act(policy.prepare(obs, CPU), True, 1.0)
        for i in range(3):
            one = EnvObs(obs.main_images[i:i + 1], obs.states[i:i + 1],
                         obs.task_descriptions[i:i + 1])
            alone = policy.act(policy.prepare(one, CPU), True, 1.0)
            assert torch.equal(alone.actions, det.actions[i:i + 1])
            assert torch.allclose(alone.logprobs, det.logprobs[i:i + 1], atol=1e-5)


def test_the_prompt_reads_the_instruction_and_the_quantised_state(lm_dir):
    policy = _policy(lm_dir)
    obs = _obs(1)
    ids = policy.prompt_ids(obs.task_descriptions[0], obs.states[0])
    text = policy.tokenizer.decode([i for i in ids if i < len(policy.tokenizer)])
    assert text == "In: What action should the robot take to move to the red square?\n" \
                   "State: \nOut: "
    state_ids = [i for i in ids if i >= policy.vocab_size - NUM_BINS]
    assert len(state_ids) == 8
    # A changed state changes its tokens (clipped to [-1, 1] first).
    moved = obs.states[0] + 0.5
    assert policy.prompt_ids(obs.task_descriptions[0], moved) != ids


def test_sampled_bins_follow_the_processed_softmax(lm_dir):
    """3,000 first tokens against softmax(logits / T) over the 255 sampled ids (3,000
    rows of a ~70-token prompt: about 5 s here)."""
    torch.manual_seed(1)
    policy = _policy(lm_dir, num_action_chunks=1, action_dim=2, unnorm_key="")
    inputs = policy.prepare(_obs(1), CPU)
    n, temperature = 3_000, 1.6
    with torch.no_grad():
        h, _, _ = policy._hidden(inputs["input_ids"], inputs["attention_mask"])
        probs = policy._process(policy._bin_logits(h[:, -1]), temperature).exp()[0]
        batch = {k: v.expand(n, -1) for k, v in inputs.items()}
        tokens = policy.stored_tokens(policy.act(batch, False, temperature).actions)[:, 0]
    counts = torch.bincount(tokens - (policy.vocab_size - SAMPLED_BINS),
                            minlength=SAMPLED_BINS).numpy()
    expected = probs.double().numpy()
    expected *= n / expected.sum()  # float32 probabilities sum to 1 within 1e-7 only
    # Pool the rare bins so every expected count is >= 5 (chi-square's validity).
    order = np.argsort(expected)
    cut = max(int(np.searchsorted(np.cumsum(expected[order]), 5.0)), 1)
    obs_c = np.append(counts[order[cut:]], counts[order[:cut]].sum())
    exp_c = np.append(expected[order[cut:]], expected[order[:cut]].sum())
    assert stats.chisquare(obs_c, exp_c).pvalue > 1e-3


def test_behaviour_cloning_falls_and_ignores_nothing(lm_dir):
    torch.manual_seed(0)
    policy = _policy(lm_dir).train()
    inputs = policy.prepare(_obs(2), CPU)
    target = policy.norm.to_env(torch.rand(2, 2, 7) * 1.6 - 0.8)
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="cross-entropy"):
        policy.bc_loss(inputs, target, mask, "mse")
    losses = fit(lambda: policy.bc_loss(inputs, target, mask), policy.parameters(), 30, 3e-3)
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        det = policy.act(inputs, True, 1.0).actions
    assert torch.equal(policy.stored_tokens(det), policy.stored_tokens(target))


def test_value_head_reads_the_last_prompt_token(lm_dir):
    policy = _policy(lm_dir, value_head=True)
    inputs = policy.prepare(_obs(), CPU)
    with torch.no_grad():
        out = policy.act(inputs, False, 1.0)
        ev = policy.evaluate(inputs, out.actions, 1.0)
    assert out.values.shape == (3,) and torch.allclose(out.values, ev.values, atol=1e-5)


def test_loading_errors_name_the_problem(lm_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        _policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="Qwen2 causal LM"):
        _policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "openvla"}))
    with pytest.raises(CheckpointError, match="preprocessor_config.json does not exist"):
        _policy(tmp_path)


# --- Qwen2.5-VL: the cameras in the prompt -------------------------------------------------

@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return make_qwen_vl(tmp_path_factory.mktemp("qwen_vl") / "vl", hidden=128,
                        max_pixels=56 * 56, action_bins=True)


def test_vl_prompt_shows_both_cameras_and_no_state(vl_dir):
    policy = _policy(vl_dir, use_wrist_image=True)
    obs = vl_obs(2)
    ids = policy.prompt_ids(obs.task_descriptions[0], obs.states[0])
    pad = policy.image_token_id
    assert ids.count(pad) == 2  # one per camera, unexpanded (what vLLM is given)
    assert policy.tokenizer.decode(ids).endswith(
        "<|vision_end|>In: What action should the robot take to pick up the black bowl?\nOut: ")
    inputs = policy.prepare(obs, CPU)
    # 56x56 images: a 4x4 patch grid, merged 2x2: 4 tokens per image, 2 images per row.
    assert ((inputs["input_ids"] == pad).sum(1) == 8).all()
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 4
    assert _policy(vl_dir, use_wrist_image=False).prompt_ids("x", obs.states[0]).count(pad) == 1


def test_vl_greedy_tokens_equal_transformers_generate(vl_dir):
    """The KV-cache decoding with Qwen2.5-VL's 3-D rotary positions, left padding included,
    picks what transformers' own ``generate`` picks with the other ids masked out."""
    from transformers import LogitsProcessorList

    policy = _policy(vl_dir, use_wrist_image=True)
    inputs = policy.prepare(vl_obs(), CPU)
    allowed = torch.zeros(policy.vocab_size, dtype=torch.bool)
    allowed[policy.action_ids] = True

    def only_bins(_, scores):
        return scores.masked_fill(~allowed, float("-inf"))

    with torch.no_grad():
        det = policy.act(inputs, True, 1.0)
        out = policy.vlm.generate(**inputs, max_new_tokens=policy.num_tokens, do_sample=False,
                                  logits_processor=LogitsProcessorList([only_bins]),
                                  pad_token_id=policy.pad_id)
    generated = out[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(generated, policy.stored_tokens(det.actions))


def _teacher_forcing_and_padding(policy, other_images):
    """act's log-probs = teacher forcing's; a row alone (not left-padded: row 2's
    instruction is longer) scores as in the batch; ``other_images`` of the same rows give
    other log-probs of the same actions (the images are read)."""
    torch.manual_seed(0)
    obs = vl_obs()
    with torch.no_grad():
        out = policy.act(policy.prepare(obs, CPU), False, 1.3)
        ev = policy.evaluate(policy.prepare(obs, CPU), out.actions, 1.3)
        assert torch.allclose(ev.logprobs, out.logprobs, atol=1e-5)
        one = EnvObs(obs.main_images[:1], obs.states[:1], obs.task_descriptions[:1],
                     wrist_images=obs.wrist_images[:1])
        alone = policy.evaluate(policy.prepare(one, CPU), out.actions[:1], 1.3)
        assert torch.allclose(alone.logprobs, out.logprobs[:1], atol=1e-5)
        moved = policy.evaluate(policy.prepare(other_images(obs), CPU), out.actions, 1.3)
    assert (moved.logprobs - ev.logprobs).abs().max() > 1e-3


def test_vl_teacher_forcing_agrees_and_padding_changes_nothing(vl_dir):
    _teacher_forcing_and_padding(
        _policy(vl_dir, use_wrist_image=True),
        lambda obs: EnvObs(obs.main_images[::-1].copy(), obs.states, obs.task_descriptions,
                           wrist_images=obs.wrist_images))


@pytest.mark.slow
def test_launch_trains_token_ar_on_the_synthetic_task(lm_dir, tmp_path):
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "model.kind": "token_ar", "model.model_path": lm_dir, "model.unnorm_key": "tiny",
        "model.num_action_chunks": 2, "run.total_updates": 2, "actor.num_actors": 1,
        "actor.envs_per_actor": 4, "actor.group_size": 2, "learner.groups_per_update": 1,
        "learner.micro_batch_size": 8})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 2 and summary["duplicates"] == 0
    server = json.loads((tmp_path / "run" / "inference-0.json").read_text())
    assert server["policy_version"] == 2 and server["rows"] > 0


def test_config_refuses_what_vllm_cannot_serve():
    base = ROOT / "configs/synthetic_grpo.yaml"
    with pytest.raises(ConfigError, match="serves model.kind=token_ar without a value head"):
        load_config(base, ["inference.backend=vllm"])
    with pytest.raises(ConfigError, match="serves model.kind=token_ar without a value head"):
        load_config(base, ["inference.backend=vllm", "model.kind=token_ar",
                           "model.model_path=x", "model.value_head=true"])
    cfg = load_config(base, ["inference.backend=vllm", "model.kind=token_ar",
                             "model.model_path=x"])
    assert cfg.inference.vllm.max_model_len == 1024


# --- OpenVLA (Prismatic): the original OpenVLA's decoding ----------------------------------

@pytest.fixture(scope="module")
def openvla_dir(tmp_path_factory):
    from models.tiny_prismatic import make_prismatic

    return make_prismatic(tmp_path_factory.mktemp("openvla") / "openvla").path


def _openvla(path, **kw):
    return _policy(path, unnorm_key="libero_spatial", use_wrist_image=True, **kw)


def test_openvla_greedy_tokens_equal_a_full_recompute_of_prismatic_s_layout(openvla_dir):
    """KV-cache decoding with the patches after BOS and left padding picks, token by token,
    what a full forward pass of Prismatic's own ``[BOS][patches][pad][prompt + tokens so
    far]`` sequence (``PrismaticVLM.hidden_states``, the OFT path) picks."""
    policy = _openvla(openvla_dir)
    obs = vl_obs()
    with torch.no_grad():
        got = policy.stored_tokens(policy.act(policy.prepare(obs, CPU), True, 1.0).actions)
        ref = policy.prismatic.encode(obs, policy.views(obs), 0, CPU)
        head = policy.vlm.lm_head.weight[policy.action_ids]
        for _ in range(policy.num_tokens):
            h = policy.vlm.hidden_states(ref)[:, -1]
            token = (h @ head.T).argmax(-1, keepdim=True) + policy.first_action_id
            ref = {**ref, "tail_ids": torch.cat([ref["tail_ids"], token], 1),
                   "tail_mask": torch.cat([ref["tail_mask"], torch.ones_like(token)], 1),
                   "placeholder": torch.cat([ref["placeholder"],
                                             torch.zeros_like(token, dtype=torch.bool)], 1)}
    assert torch.equal(got, ref["tail_ids"][:, -policy.num_tokens:])
    assert policy.prompt_ids("Open the drawer", obs.states[0])[0] == policy.tokenizer.bos_token_id


def test_openvla_teacher_forcing_agrees_and_padding_changes_nothing(openvla_dir):
    _teacher_forcing_and_padding(  # other wrist images: the wrist camera is read
        _openvla(openvla_dir, top_k=50),
        lambda obs: EnvObs(obs.main_images, obs.states, obs.task_descriptions,
                           wrist_images=obs.wrist_images[::-1].copy()))


def test_openvla_behaviour_cloning_learns_with_lora(openvla_dir):
    """Demonstration chunks cloned through LoRA adapters: the loss falls, the target
    tokens gain probability, and the base weights stay as loaded."""
    torch.manual_seed(0)
    policy = _openvla(openvla_dir, lora_rank=8).train()
    inputs = policy.prepare(vl_obs(2), CPU)
    target = policy.decode(policy.stored_tokens(torch.rand(2, 2, 7) * 0.6 - 0.3))
    base = {k: v.clone() for k, v in policy.vlm.named_parameters() if not v.requires_grad}
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = policy.bc_loss(inputs, target, torch.ones(2, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # 5.54 -> 4.68 when written
    assert all(torch.equal(v, dict(policy.vlm.named_parameters())[k]) for k, v in base.items())


def test_vllm_refuses_what_its_openvla_model_cannot_serve(openvla_dir, tmp_path):
    """vLLM's OpenVLA model is OpenVLA-7B's (224 px, one image): anything else is refused
    with the reason before an engine is built (vllm need not be installed for that)."""
    from inference_server.vllm_core import VLLMCore, openvla_unservable
    from models.tiny_prismatic import make_prismatic

    both = _openvla(openvla_dir)
    with pytest.raises(RuntimeError, match="takes one image a prompt; set "
                                           "model.use_wrist_image=false"):
        VLLMCore(both, str(openvla_dir), 1.0, 8)
    small = _policy(openvla_dir, unnorm_key="libero_spatial", use_wrist_image=False)
    assert "this checkpoint crops its images to [(56, 56)]" in openvla_unservable(small)
    full = _policy(make_prismatic(tmp_path / "openvla224", image_size=224).path,
                   unnorm_key="libero_spatial", use_wrist_image=False)
    try:
        import timm  # noqa: F401
        expected = ""
    except ImportError:
        expected = ("inference.backend=vllm: vLLM's OpenVLA model builds its vision towers "
                    "with timm, which .venv-vllm lacks: .venv-vllm/bin/pip install timm")
    assert openvla_unservable(full) == expected
