"""Tiny random VLA checkpoints, built offline and saved in the publishers' layouts.

A Qwen2.5-VL of a few hundred thousand parameters with a byte-level tokenizer made from
scratch (no download), saved with ``save_pretrained``; then a StarVLA run directory
around it (config.yaml, dataset_statistics.json, checkpoints/steps_N_pytorch_model.pt);
and a text-only Qwen2 causal LM for the autoregressive action-token policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
STATS = {"action": {"q01": [-0.5, -0.4, -0.3, -0.2, -0.1, -0.05, 0.0],
                    "q99": [0.5, 0.4, 0.9, 0.2, 0.1, 0.15, 1.0],
                    "min": [-1.0] * 7, "max": [1.0] * 7,
                    "mask": [True] * 6 + [False]}}


def tiny_tokenizer():
    """A byte-level BPE without merges (any text) plus Qwen's special tokens and 🔍."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = Qwen2Tokenizer(tokenizer_object=backend, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         additional_special_tokens=SPECIALS[1:])
    tok.add_tokens(["🔍"])
    return tok


def make_qwen_vl(folder: Path, hidden: int = 64, layers: int = 2,
                 max_pixels: int = 112 * 112, action_bins: bool = False) -> Path:
    """A tiny random Qwen2.5-VL saved as a Hugging Face directory. ``action_bins``: for
    token_ar and vLLM, as :func:`make_qwen2_lm`: 256 ids past the tokenizer's, an output
    head of its own, and ``dataset_statistics.json`` (key ``tiny``); give ``hidden`` >= 128
    for vLLM's CPU attention (heads of 32)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil)

    tok = tiny_tokenizer()
    ids = tok.convert_tokens_to_ids
    heads = 4
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=2, vocab_size=len(tok) + 256 * action_bins,
                         max_position_embeddings=4096, tie_word_embeddings=not action_bins,
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                         bos_token_id=None,
                         rope_scaling={"type": "mrope", "mrope_section": [
                             hidden // heads // 4, hidden // heads // 8, hidden // heads // 8]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                           out_hidden_size=hidden, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, in_chans=3, fullatt_block_indexes=[1],
                           window_size=56),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"), bos_token_id=None,
        tie_word_embeddings=not action_bins)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    if action_bins:
        (folder / "dataset_statistics.json").write_text(json.dumps({"tiny": STATS}))
    # Small images by default: 56x56 to 112x112 pixels, 4 to 16 tokens per image.
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels).save_pretrained(folder)
    return folder


def make_qwen2_lm(folder: Path, hidden: int = 128, layers: int = 2,
                  with_statistics: bool = True) -> Path:
    """A tiny random Qwen2 causal LM (text only) saved as a Hugging Face directory, with
    256 ids past the tokenizer's for the action bins (as Qwen's own checkpoints pad the
    vocabulary), heads of 32 dims (vLLM's CPU attention needs at least 32), an output
    head of its own (vLLM's in-place reload redoes the CPU repacking of only one of two
    tied layers), and a ``dataset_statistics.json`` under the key ``tiny``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer()
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=hidden // 32,
                      num_key_value_heads=max(1, hidden // 64), vocab_size=len(tok) + 256,
                      max_position_embeddings=1024, tie_word_embeddings=False,
                      eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                      bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    if with_statistics:
        (folder / "dataset_statistics.json").write_text(json.dumps({"tiny": STATS}))
    return folder


def make_starvla_run(folder: Path, base_vlm: Path, action_dim: int = 7, chunk: int = 8,
                     unnorm_key: str = "libero_spatial", seed: int = 1,
                     cot_prompt: str = "") -> Path:
    """A StarVLA QwenOFT run directory whose weights are a fresh policy on ``base_vlm``."""
    from configs import ModelConfig
    from models.vla_loading import HEAD_PREFIX, VLM_PREFIX, load_qwen_oft

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"framework": {
        "name": "QwenOFT", "qwenvl": {"base_vlm": str(base_vlm)},
        "action_model": {"action_dim": action_dim, "future_action_window_size": chunk - 1,
                         "past_action_window_size": 0}},
        **({"datasets": {"vla_data": {"CoT_prompt": cot_prompt}}} if cot_prompt else {})}))
    (folder / "dataset_statistics.json").write_text(json.dumps({unnorm_key: STATS}))
    torch.manual_seed(seed)
    policy = load_qwen_oft(ModelConfig(kind="qwen_oft", model_path=str(base_vlm),
                                       action_dim=action_dim, num_action_chunks=chunk))
    state = {VLM_PREFIX + k: v for k, v in policy.vlm.state_dict().items()}
    state.update({HEAD_PREFIX + k: v for k, v in policy.action_model.state_dict().items()})
    (folder / "checkpoints").mkdir(exist_ok=True)
    torch.save(state, folder / "checkpoints" / "steps_100_pytorch_model.pt")
    return folder


def check_oft_decoding(policy, inputs: dict, rows: int = 3) -> dict:
    """What every OpenVLA-OFT backbone must satisfy on ``inputs``: [B,T,D] chunks and
    per-token log-probs that the learner's ``evaluate`` recomputes within 1e-5, the mode
    = the argmax bins un-normalised with q01/q99, actions inside the statistics, positive
    entropy. Returns the logits for further checks."""
    from models.action_tokens import NUM_BINS, tokens_to_actions

    with torch.no_grad():
        out = policy.act(inputs, False, 1.6)
        again = policy.evaluate(inputs, out.actions, 1.6)
        mode = policy.act(inputs, True, 1.0)
        logits = policy._logits(inputs)[0]
    shape = (rows, policy.num_action_chunks, policy.action_dim)
    assert out.actions.shape == out.logprobs.shape == shape and out.values.shape == (rows,)
    assert logits.shape == (rows, shape[1] * shape[2], NUM_BINS)
    assert (again.logprobs - out.logprobs).abs().max().item() <= 1e-5
    assert bool((out.logprobs <= 0).all()) and bool(torch.isfinite(out.logprobs).all())
    v = policy.vocab_size
    expected = tokens_to_actions(logits.argmax(-1) + v - NUM_BINS, v).view(shape)
    torch.testing.assert_close(mode.actions, policy.norm.to_env(expected))
    low, high = torch.tensor(STATS["action"]["q01"]), torch.tensor(STATS["action"]["q99"])
    assert bool(((out.actions[..., :6] >= low[:6]) & (out.actions[..., :6] <= high[:6])).all())
    assert again.entropy.shape == shape and bool((again.entropy > 0).all())
    return logits


if __name__ == "__main__":  # python -m models.tiny_vla qwen2|qwen_vl DIR: a tiny model offline
    import argparse

    parser = argparse.ArgumentParser(description="save a tiny random model for token_ar")
    parser.add_argument("kind", choices=["qwen2", "qwen_vl"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.kind == "qwen2":
        print(make_qwen2_lm(args.folder))
    else:
        print(make_qwen_vl(args.folder, hidden=128, action_bins=True))
