"""Policy throughput: inference action-chunks/s and learner samples/s, each with a baseline.

What it measures
    Models (--models): ``cnn``, the small CPU policy (``build_policy(ModelConfig())``), and
    ``qwen_oft_tiny``, QwenOFT loaded by ``load_qwen_oft`` from a StarVLA run made in a
    temporary folder around tests/vla_factory's tiny random Qwen2.5-VL (hidden 64, 2
    layers, byte-level tokenizer; its image processor shrinks images to at most 112x112,
    16 tokens an image). Both on --device (cpu).

    inference, for each batch B (--batches) of random observations (main and wrist uint8
    images S x S, 8-D states, instructions), under no_grad, side by side in one run:
      end to end  ``policy.act(policy.prepare(obs), deterministic=False, temperature=1)``,
                  an inference server's pass (InferenceCore)
      forward     the baseline: the model alone on inputs prepared beforehand (QwenOFT:
                  backbone + head, ``policy._heads``; CNN: ``policy.act``)
      chunks/s = B / seconds a call; end/forward < 1 is the cost of ``prepare`` (prompts,
      tokenizer, image processor).
    learner: a real TrainBatch of --learner-batch chunks from synthetic-env episodes that
    the policy itself acted (QwenOFT's wrist image: a copy of the main camera), micro-
    batches of --micro-batch:
      step        ``Learner.step(batch)``: prepare, evaluate, PPO loss, backward, clip, Adam
      fwd+bwd     the baseline: ``policy.evaluate`` + backward of the log-probs' sum on the
                  same micro-batches, prepared beforehand; no loss, no optimiser
    full size (--full-size, CUDA only): the Qwen2.5-VL-3B architecture from its published
    config values, random weights, bf16, QwenOFT's head, 224x224 images (64 tokens each,
    main + wrist), ids built directly (its tokenizer would need a download): forward vs
    image processor + forward chunks/s at --full-batch, and forward+backward samples/s in
    micro-batches of --full-micro-batch. The GPU is named in the output.

    Each figure is the median of --repeats rounds of --seconds (at least one call) after
    one warm-up call; the rounds alternate the order of the two paths against drift.

How to run
    .venv/bin/python benchmarks/models.py                 # CPU, both tiny models
    .venv/bin/python benchmarks/models.py --batches 1,8 --seconds 0.5 --repeats 1
    .venv/bin/python benchmarks/models.py --models qwen_oft_tiny --full-size --json m.json
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file shares its name with chunkrl's `models` package: keep its own folder off the
# path (python puts it first) so `import models` finds the package, from the checkout.
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = ("cnn", "qwen_oft_tiny")
COLOURS = ("red", "green", "blue", "yellow")
# Qwen2.5-VL-3B-Instruct's published config.json values (no download).
QWEN25_VL_3B = dict(
    text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                     max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1e6,
                     tie_word_embeddings=True, hidden_act="silu",
                     rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=2048, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, window_size=112, in_chans=3, hidden_act="silu",
                       fullatt_block_indexes=[7, 15, 23, 31]),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
    vision_end_token_id=151653, tie_word_embeddings=True)
ACTION_ID = 145000  # stands in for the id of StarVLA's query token (any ordinary id)


def measure(paths: dict, args, device: torch.device) -> dict:
    """{name: median units/s} of ``paths`` {name: (fn, units per call)}, interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates: dict = {name: [] for name in paths}
    for fn, _ in paths.values():
        fn()  # warm-up
    for r in range(args.repeats):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            fn, units = paths[name]
            sync()
            calls, start = 0, time.perf_counter()
            while True:
                fn()
                sync()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= args.seconds:
                    break
            rates[name].append(units * calls / elapsed)
    return {name: statistics.median(v) for name, v in rates.items()}


def random_obs(batch: int, size: int, seed: int = 0):
    from envs.base import EnvObs

    rng = np.random.default_rng(seed)
    image = (lambda: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    return EnvObs(image(), rng.standard_normal((batch, 8), dtype=np.float32),
                  [f"put the {COLOURS[i % 4]} block in the basket" for i in range(batch)],
                  wrist_images=image())


def build(name: str, tmp: Path):
    from configs import ModelConfig
    from models import build_policy

    if name == "cnn":
        return build_policy(ModelConfig())
    from tests.vla_factory import make_qwen_vl, make_starvla_run

    run = make_starvla_run(tmp / "run", make_qwen_vl(tmp / "vlm"))
    return build_policy(ModelConfig(kind="qwen_oft", model_path=str(run),
                                    unnorm_key="libero_spatial"))


def bench_inference(name: str, policy, args, device) -> list[dict]:
    rows = []
    policy.eval()
    for b in args.batches:
        obs = random_obs(b, args.image_size)
        prepared = policy.prepare(obs, device)
        model = (lambda: policy._heads(prepared)) if name != "cnn" else \
            (lambda: policy.act(prepared, False, 1.0))
        with torch.no_grad():
            r = measure({"end_to_end": (lambda: policy.act(policy.prepare(obs, device),
                                                           False, 1.0), b),
                         "forward": (model, b)}, args, device)
        rows.append({"model": name, "batch": b, "image_size": args.image_size, **r,
                     "ratio": r["end_to_end"] / r["forward"]})
        print(f"{name} inference B={b}: end to end {r['end_to_end']:.1f}, forward "
              f"{r['forward']:.1f} chunks/s", flush=True)
    return rows


def learner_batch(policy, n: int, size: int, wrist: bool):
    """A TrainBatch of exactly ``n`` chunks from episodes ``policy`` acted in the synthetic
    env (8 chunks-long episodes at most; one episode per env gives >= n chunks)."""
    from actors.executor import IdSource, StageExecutor
    from configs import EnvConfig
    from envs import make_env, take
    from learner.batch import TrainBatch, build_batch

    g, num_groups = 8, -(-n // 8)
    env = make_env(EnvConfig(kind="synthetic", image_size=size, max_episode_steps=24),
                   num_groups * g, g, policy.action_dim)
    seeds = iter(range(10**6))
    stage = StageExecutor(env, list(range(num_groups)), policy.num_action_chunks,
                          IdSource(0), lambda group: next(seeds))
    done: dict = {}
    policy.eval()
    while len(done) < num_groups or any(len(v) < g for v in done.values()):
        obs = stage.observe()
        if wrist:
            obs = dataclasses.replace(obs, wrist_images=obs.main_images.copy())
        with torch.no_grad():
            out = policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
        for ep in stage.execute(out.actions.float().numpy(), out.logprobs.float().numpy(),
                                None, 0):
            done.setdefault(ep.group_id, []).append(ep)
    full = build_batch(list(done.values())[:num_groups])
    obs = take(full.obs, np.arange(n))
    if wrist:
        obs = dataclasses.replace(obs, wrist_images=obs.main_images[:, ::-1].copy())
    return TrainBatch(obs, full.actions[:n], full.old_logprobs[:n], full.advantages[:n],
                      full.mask[:n], full.versions[:n])


def bench_learner(name: str, policy, args, device) -> dict:
    from configs import LearnerConfig
    from envs import take
    from learner.core import Learner

    batch = learner_batch(policy.cpu(), args.learner_batch, args.image_size, name != "cnn")
    policy.to(device)
    cfg = LearnerConfig(micro_batch_size=args.micro_batch)
    learner = Learner(policy, cfg, 1.0, device)
    micro = [(policy.prepare(take(batch.obs, idx), device), batch.actions[idx].to(device))
             for idx in np.array_split(np.arange(len(batch)),
                                       -(-len(batch) // args.micro_batch))]

    def fwd_bwd():
        policy.zero_grad(set_to_none=True)
        for inputs, actions in micro:
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                ev = policy.evaluate(inputs, actions, 1.0)
            ev.logprobs.sum().backward()

    r = measure({"step": (lambda: learner.step(batch), len(batch)),
                 "fwd_bwd": (fwd_bwd, len(batch))}, args, device)
    print(f"{name} learner: step {r['step']:.1f}, fwd+bwd {r['fwd_bwd']:.1f} samples/s",
          flush=True)
    return {"model": name, "batch": len(batch), "micro_batch": args.micro_batch,
            "image_size": args.image_size, **r, "ratio": r["step"] / r["fwd_bwd"]}


# --- full size: Qwen2.5-VL-3B architecture, random bf16 weights (a GPU) ------------------

def full_size_policy(device: torch.device, attn: str, config: dict = QWEN25_VL_3B):
    from types import SimpleNamespace

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from models.qwen_oft import QwenOFTPolicy

    cfg = Qwen2_5_VLConfig(**config)
    with device:  # random init straight on the device
        vlm = Qwen2_5_VLForConditionalGeneration._from_config(
            cfg, dtype=torch.bfloat16, attn_implementation=attn)
    tokenizer = SimpleNamespace(convert_tokens_to_ids=lambda _: ACTION_ID, unk_token_id=None)
    policy = QwenOFTPolicy(vlm, tokenizer, None, num_action_chunks=8, action_dim=7)
    return policy.to(device, torch.bfloat16)


def full_size_ids(batch: int, size: int, policy) -> torch.Tensor:
    """StarVLA's prompt shape: system, 2 x (vision start, image pads, vision end), the
    instruction and query suffix with T action tokens, the assistant tag."""
    cfg, vis = policy.vlm.config, policy.vlm.config.vision_config
    per_image = (size // vis.patch_size) ** 2 // vis.spatial_merge_size ** 2
    rng = np.random.default_rng(0)
    text = (lambda k: rng.integers(100, 100_000, (batch, k)))
    image = np.array([cfg.vision_start_token_id] + [cfg.image_token_id] * per_image
                     + [cfg.vision_end_token_id])
    parts = [text(20), *[np.broadcast_to(image, (batch, len(image)))] * 2, text(24),
             np.full((batch, policy.num_action_chunks), ACTION_ID), text(8)]
    return torch.from_numpy(np.concatenate(parts, 1))


def bench_full_size(args) -> list[dict]:
    from transformers import Qwen2VLImageProcessorPil

    device, b = torch.device("cuda"), args.full_batch
    gpu = torch.cuda.get_device_name(device)
    policy = full_size_policy(device, args.attn)
    params = sum(p.numel() for p in policy.parameters())
    print(f"# full size: Qwen2.5-VL-3B architecture + QwenOFT head, {params / 1e9:.2f} B "
          f"params, random bf16, attn {args.attn}, on {gpu}", flush=True)
    processor = Qwen2VLImageProcessorPil()  # its defaults keep 224x224 as it is
    obs = random_obs(b, args.full_image_size)
    ids = full_size_ids(b, args.full_image_size, policy)

    def prepare(o):
        images = [im for i in range(b) for im in (o.main_images[i], o.wrist_images[i])]
        pix = processor(images=images, return_tensors="pt")
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "pixel_values": pix["pixel_values"].to(device),
                "image_grid_thw": pix["image_grid_thw"].to(device)}

    prepared = prepare(obs)
    assert int((prepared["input_ids"] == policy.vlm.config.image_token_id).sum()) == \
        int(prepared["image_grid_thw"].prod(-1).sum()) // 4, "image tokens != patches / 4"
    policy.eval()
    with torch.no_grad():
        r = measure({"end_to_end": (lambda: policy._heads(prepare(obs)), b),
                     "forward": (lambda: policy._heads(prepared), b)}, args, device)
    rows = [{"what": "inference", "batch": b, **r, "ratio": r["end_to_end"] / r["forward"]}]
    print(f"full size inference B={b}: image processor + forward {r['end_to_end']:.2f}, "
          f"forward {r['forward']:.2f} chunks/s", flush=True)
    policy.train()
    actions = torch.zeros(b, policy.num_action_chunks, policy.action_dim, device=device)
    m = args.full_micro_batch
    micro = [({k: (v[i:i + m] if k in ("input_ids", "attention_mask") else v)
               for k, v in prepared.items()}, actions[i:i + m]) for i in range(0, b, m)]
    for inputs, _ in micro:  # the rows' own patches and grids
        rows_ = slice(inputs is None, None)  # placeholder replaced below
    micro = []
    patches = int(prepared["image_grid_thw"][0].prod())  # every image has the same grid
    for i in range(0, b, m):
        j = min(i + m, b)
        micro.append(({"input_ids": prepared["input_ids"][i:j],
                       "attention_mask": prepared["attention_mask"][i:j],
                       "pixel_values": prepared["pixel_values"][2 * i * patches:2 * j * patches],
                       "image_grid_thw": prepared["image_grid_thw"][2 * i:2 * j]},
                      actions[i:j]))

    def fwd_bwd():
        policy.zero_grad(set_to_none=True)
        for inputs, act in micro:
            policy.evaluate(inputs, act, 1.0).logprobs.sum().backward()

    torch.cuda.reset_peak_memory_stats(device)
    try:
        t = measure({"fwd_bwd": (fwd_bwd, b)}, args, device)["fwd_bwd"]
        rows.append({"what": "fwd+bwd", "batch": b, "micro_batch": m, "fwd_bwd": t,
                     "ratio": t / r["forward"],
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30})
        print(f"full size fwd+bwd B={b} (micro {m}): {t:.2f} samples/s", flush=True)
    except torch.cuda.OutOfMemoryError:
        rows.append({"what": "fwd+bwd", "batch": b, "micro_batch": m, "fwd_bwd": None,
                     "ratio": None, "error": f"out of memory at micro-batch {m}"})
        print(f"full size fwd+bwd: out of memory at micro-batch {m}; try a smaller "
              "--full-micro-batch", flush=True)
    for row in rows:
        row["device"] = gpu
    return rows
