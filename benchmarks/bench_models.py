"""Policy throughput: inference action-chunks/s and learner samples/s, each with a baseline.

What it measures
    ``cnn``: the small CPU policy (``build_policy(ModelConfig())``). ``qwen_oft_tiny``:
    QwenOFT loaded by ``load_qwen_oft`` from a StarVLA run, made in a temporary folder
    around models/tiny_vla.py's tiny random Qwen2.5-VL (hidden 64, 2 layers, byte-level
    tokenizer; a 224x224 image stays 224x224: 64 tokens, as with the real processor).
    ``openvla_oft_tiny``: OpenVLA-OFT decoding (56 action tokens, 256 bins) on
    models/tiny_prismatic.py's tiny random OpenVLA (Prismatic: DINOv2 + SigLIP widths 64/48,
    3 blocks each, a 2-layer Llama of width 64) at OpenVLA's 224 px, so the main image is
    the real 256 patches; one image, as RLinf's LIBERO configs. Loaded by
    ``load_openvla_oft``. All on --device (cpu).
    ``qwen_oft_3b`` (--full-size, CUDA): QwenOFT on the Qwen2.5-VL-3B architecture from its
    published config values, random weights, all bf16, batch --full-batch. Its tokenizer
    would need a download, so its ``prepare`` runs the real image processor and builds the
    ids itself: StarVLA's prompt shape, 64 image pads a 224x224 image, T query tokens.

    inference, per batch B (--batches) of random observations (main + wrist uint8 images
    S x S, 8-D states, instructions), under no_grad:
      end to end  ``policy.act(policy.prepare(obs), False, 1.0)``: an InferenceCore pass
      forward     baseline: the model alone on inputs prepared beforehand (QwenOFT:
                  backbone + head, ``policy._heads``; OpenVLA-OFT:
                  the action-bin logits, ``policy._logits``; CNN: ``policy.act``)
      chunks/s = B / seconds a call; end/forward < 1 is the cost of ``prepare`` (prompts,
      tokenizer, image processor, copies to the device).
    learner, on a TrainBatch of --learner-batch chunks from synthetic-env episodes that
    the policy itself acted (QwenOFT's wrist image: a flipped copy of the main one):
      step        ``Learner.step(batch)``, micro-batches of --micro-batch: prepare,
                  evaluate, PPO loss, backward; clip, Adam
      fwd+bwd     baseline: ``policy.evaluate`` + backward of the log-probs' sum on the same
                  micro-batches, prepared beforehand; no loss, no optimiser
    Figures: median of --repeats rounds of --seconds (>= one call) after a warm-up call,
    the two paths in alternating order, side by side in one run; --threads torch threads
    (1, as run.torch_threads: steady on a shared machine). Default run: ~2.5 min, 2 cores.

How to run
    .venv/bin/python benchmarks/bench_models.py                 # CPU: both tiny models
    .venv/bin/python benchmarks/bench_models.py --batches 1,8 --seconds 0.5 --repeats 1  # smoke
    .venv/bin/python benchmarks/bench_models.py --models cnn --full-size --json m.json  # a GPU
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

import numpy as np
import torch

MODELS = ("cnn", "qwen_oft_tiny", "openvla_oft_tiny")
MAX_PIXELS = 224 * 224  # as the real processor: a 224x224 image stays 224x224, 64 tokens
COLOURS = ("red", "green", "blue", "yellow")
# Qwen2.5-VL-3B-Instruct's published config.json values (nothing is downloaded).
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
ACTION_ID = 145000  # stands in for the id of StarVLA's query token (an ordinary id)


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
            calls, elapsed, start = 0, 0.0, time.perf_counter()
            while calls == 0 or elapsed < args.seconds:
                fn()
                sync()
                calls, elapsed = calls + 1, time.perf_counter() - start
            rates[name].append(units * calls / elapsed)
    return {name: statistics.median(v) for name, v in rates.items()}


def random_obs(batch: int, size: int):
    from envs.base import EnvObs

    rng = np.random.default_rng(0)

    def image():
        return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

    return EnvObs(image(), rng.standard_normal((batch, 8), dtype=np.float32),
                  [f"put the {COLOURS[i % 4]} block in the basket" for i in range(batch)],
                  wrist_images=image())


def build(name: str, tmp: Path, args):
    from configs import ModelConfig
    from models import build_policy

    if name == "cnn":
        return build_policy(ModelConfig())
    if name == "qwen_oft_3b":
        return full_size_policy(torch.device("cuda"), args.attn)
    from models.tiny_vla import make_qwen_vl, make_starvla_run

    if name == "openvla_oft_tiny":
        from models.tiny_prismatic import make_prismatic

        vlm = make_prismatic(tmp / "openvla", image_size=224).path
        return build_policy(ModelConfig(kind="openvla_oft", model_path=str(vlm),
                                        unnorm_key="libero_spatial", use_wrist_image=False))
    run = make_starvla_run(tmp / "run", make_qwen_vl(tmp / "vlm", max_pixels=MAX_PIXELS))
    return build_policy(ModelConfig(kind="qwen_oft", model_path=str(run),
                                    unnorm_key="libero_spatial"))


def full_size_policy(device: torch.device, attn: str, config: dict = QWEN25_VL_3B):
    """QwenOFT (T=8, D=7) on a random bf16 Qwen2.5-VL of ``config``, with a ``prepare``
    that needs no tokenizer (see the module docstring)."""
    from types import SimpleNamespace

    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil)

    from models.qwen_oft import QwenOFTPolicy

    cfg = Qwen2_5_VLConfig(**config)
    with device:  # random init straight on the device
        vlm = Qwen2_5_VLForConditionalGeneration._from_config(
            cfg, dtype=torch.bfloat16, attn_implementation=attn)
    tokenizer = SimpleNamespace(convert_tokens_to_ids=lambda _: ACTION_ID, unk_token_id=None)
    processor = Qwen2VLImageProcessorPil()  # its defaults keep 224x224 images as they are
    policy = QwenOFTPolicy(vlm, tokenizer, processor, num_action_chunks=8, action_dim=7)
    policy.to(device, torch.bfloat16)

    def prepare(obs, dev: torch.device) -> dict:
        b = len(obs)
        pix = processor(images=[im for i in range(b) for im in (obs.main_images[i],
                                                                obs.wrist_images[i])],
                        return_tensors="pt")
        grid = pix["image_grid_thw"]
        per_image = int(grid[0].prod()) // cfg.vision_config.spatial_merge_size ** 2
        assert bool((grid == grid[0]).all()), "images of one size give one grid"
        image = [cfg.vision_start_token_id] + [cfg.image_token_id] * per_image + \
            [cfg.vision_end_token_id]
        rng = np.random.default_rng(0)

        def text(k):  # system, task, suffix ids
            return rng.integers(100, 100_000, (b, k))

        ids = torch.from_numpy(np.concatenate(
            [text(20), np.tile(image * 2, (b, 1)), text(24),
             np.full((b, policy.num_action_chunks), ACTION_ID), text(8)], 1))
        return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev),
                "pixel_values": pix["pixel_values"].to(dev), "image_grid_thw": grid.to(dev)}

    policy.prepare = prepare
    return policy


def bench_inference(name: str, policy, args, device) -> list[dict]:
    rows = []
    policy.eval()
    for b in args.batches:
        obs = random_obs(b, args.image_size)
        prepared = policy.prepare(obs, device)
        forward = {"cnn": lambda: policy.act(prepared, False, 1.0),
                   "openvla_oft_tiny": lambda: policy._logits(prepared)}.get(
                       name, lambda: policy._heads(prepared))
        with torch.no_grad():
            r = measure({"end_to_end": (lambda: policy.act(policy.prepare(obs, device),
                                                           False, 1.0), b),
                         "forward": (forward, b)}, args, device)
        rows.append({"model": name, "batch": b, **r, "ratio": r["end_to_end"] / r["forward"]})
        print(f"{name} inference B={b}: end to end {r['end_to_end']:.1f}, forward "
              f"{r['forward']:.1f} chunks/s", flush=True)
    return rows


def learner_batch(policy, n: int, size: int, device, wrist: bool):
    """A TrainBatch of exactly ``n`` chunks from episodes ``policy`` acted in the synthetic
    env: 8-env groups, episodes of at most 3 chunks, one episode an env (>= n chunks)."""
    from actors.executor import StageExecutor
    from protocol.ids import IdSource
    from configs import EnvConfig
    from envs import make_env, take
    from learner.batch import TrainBatch, build_batch

    g, groups = 8, -(-n // 8)
    env = make_env(EnvConfig(kind="synthetic", image_size=size, max_episode_steps=24),
                   groups * g, g, policy.action_dim)
    seeds = iter(range(10**6))
    stage = StageExecutor(env, list(range(groups)), policy.num_action_chunks, IdSource(0),
                          lambda group: next(seeds))
    done: dict = {}
    policy.eval()
    while len(done) < groups or any(len(v) < g for v in done.values()):
        obs = stage.observe()
        if wrist:
            obs = dataclasses.replace(obs, wrist_images=obs.main_images)
        with torch.no_grad():
            out = policy.act(policy.prepare(obs, device), False, 1.0)
        for ep in stage.execute(out.actions.float().cpu().numpy(),
                                out.logprobs.float().cpu().numpy(), None, 0):
            done.setdefault(ep.group_id, []).append(ep)
    full = build_batch(list(done.values())[:groups])
    obs = take(full.obs, np.arange(n))
    if wrist:
        obs = dataclasses.replace(obs, wrist_images=obs.main_images[:, ::-1].copy())
    return TrainBatch(obs, full.actions[:n], full.old_logprobs[:n], full.advantages[:n],
                      full.mask[:n], full.versions[:n])


def bench_learner(name: str, policy, args, device) -> list[dict]:
    from configs import LearnerConfig
    from envs import take
    from learner.core import Learner

    batch = learner_batch(policy, args.learner_batch, args.image_size, device, name != "cnn")
    learner = Learner(policy, LearnerConfig(micro_batch_size=args.micro_batch), 1.0, device)
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
    return [{"model": name, "batch": len(batch), "micro_batch": args.micro_batch, **r,
             "ratio": r["step"] / r["fwd_bwd"]}]


def table(title: str, rows: list[dict], cols: dict) -> None:
    """A Markdown table of ``rows``; ``cols`` maps headers to keys (a missing key: blank)."""
    def cell(v):
        return f"{v:,.{2 if abs(v) < 10 else 1}f}" if isinstance(v, float) else str(v)
    cols = {h: k for h, k in cols.items() if any(k in r for r in rows)}
    print(f"\n{title}\n\n| " + " | ".join(cols) + " |\n|---|" + "---:|" * (len(cols) - 1))
    for r in rows:
        print("| " + " | ".join(cell(r.get(k, "")) for k in cols.values()) + " |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="subset of %(default)s")
    p.add_argument("--batches", default="1,8,32,64", help="inference batches (1,8,32,64)")
    p.add_argument("--image-size", type=int, default=224, help="H = W of images (224)")
    p.add_argument("--learner-batch", type=int, default=64, help="chunks a step (64)")
    p.add_argument("--micro-batch", type=int, default=32, help="learner micro-batch (32)")
    p.add_argument("--device", default="cpu", help="for the tiny models (cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement (2)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; median (3)")
    p.add_argument("--full-size", action="store_true", help="also qwen_oft_3b (CUDA)")
    p.add_argument("--full-batch", type=int, default=64, help="qwen_oft_3b batch (64)")
    p.add_argument("--full-micro-batch", type=int, default=16,
                   help="qwen_oft_3b learner micro-batch (16)")
    p.add_argument("--attn", default="sdpa", help="qwen_oft_3b attention kernel (sdpa)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(MODELS):
        p.error(f"--models: a comma-separated subset of {','.join(MODELS)}")
    parts = [b.strip() for b in args.batches.split(",") if b.strip()]
    args.batches = [int(b) for b in parts if b.isdigit()]
    sizes = [args.image_size, args.learner_batch, args.micro_batch, args.threads,
             args.repeats, args.full_batch, args.full_micro_batch]
    if len(args.batches) != len(parts) or min(args.batches + sizes + [0] * (not parts)) < 1 \
            or args.seconds <= 0:
        p.error("--batches: comma-separated integers >= 1; sizes, --threads, --repeats "
                ">= 1; --seconds > 0")
    if args.full_size and not torch.cuda.is_available():
        p.error("--full-size needs a CUDA GPU (torch.cuda.is_available() is False)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    import transformers

    transformers.logging.set_verbosity_error()  # no load reports or progress bars
    transformers.logging.disable_progress_bar()
    logging.getLogger("models.vla_loading").setLevel(logging.ERROR)  # "head initialised"
    torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine()}
    print(f"# chunkrl model benchmark: {args.image_size}x{args.image_size} images (main + "
          f"wrist), {args.seconds:g} s per measurement, median of {args.repeats}; "
          f"{args.threads} torch threads; " + ", ".join(f"{k} {v}" for k, v in meta.items()),
          flush=True)
    runs = [(m, args, torch.device(args.device)) for m in args.models]
    if args.full_size:
        full = argparse.Namespace(**{**vars(args), "batches": [args.full_batch],
                                     "learner_batch": args.full_batch,
                                     "micro_batch": args.full_micro_batch})
        runs.append(("qwen_oft_3b", full, torch.device("cuda")))
        meta["gpu"] = torch.cuda.get_device_name(0)
    inference, learner = [], []
    with tempfile.TemporaryDirectory(prefix="chunkrl-bench-models-") as tmp:
        for name, a, device in runs:
            torch.manual_seed(0)
            policy = build(name, Path(tmp), a).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            for fn, rows in ((bench_inference, inference), (bench_learner, learner)):
                try:
                    got = fn(name, policy, a, device)
                except torch.OutOfMemoryError:  # the 3B model at too large a batch
                    print(f"{name}: out of memory on {device} in {fn.__name__}", flush=True)
                    got = [{"model": name, "error": "out of memory"}]
                    torch.cuda.empty_cache()
                rows += [{**row, "device": where} for row in got]
            if device.type == "cuda":
                meta[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            del policy
    table(f"Inference ({args.image_size}x{args.image_size} main + wrist images)", inference,
          {"model": "model", "device": "device", "batch": "batch",
           "end to end chunks/s": "end_to_end",
           "forward chunks/s": "forward", "end/forward": "ratio", "note": "error"})
    table("Learner (synthetic-env batch)", learner,
          {"model": "model", "device": "device", "batch": "batch", "micro": "micro_batch",
           "Learner.step samples/s": "step", "fwd+bwd samples/s": "fwd_bwd",
           "step/fwd+bwd": "ratio", "note": "error"})
    if "qwen_oft_3b_peak_gib" in meta:
        print(f"\nqwen_oft_3b: peak {meta['qwen_oft_3b_peak_gib']:.1f} GiB allocated on "
              f"{meta['gpu']}")
    if args.json:
        meta.update({k: v for k, v in vars(args).items() if k != "json"})
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "inference": inference, "learner": learner}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
