"""The GPU check: what chunkrl's GPU paths do on one GPU, in one command of a few minutes.

    python scripts/gpu_check.py --json gpu_check.json     # one H200: about 4 minutes
    python scripts/gpu_check.py --dry-run                 # CPU, tiny shapes: ~1 minute

Sections (each one's failure is recorded with its message and the next one runs; the JSON
is rewritten after every section, so a run cut short keeps what it measured):

``matmul``
    The baseline every rate below is held against, measured in the same run: the bf16
    rate of an 8192^3 matrix product (mean of 10 after 3 warm-ups, timed between two
    device synchronisations).
``qwen_oft_3b``
    QwenOFT (T=8, D=7) on the Qwen2.5-VL-3B architecture (random weights, all bf16, as a
    server holds it), 224x224 main + wrist images: chunks/s end to end
    (``prepare`` + ``act``, as an InferenceCore pass) and of the model alone, at batches
    8/32/64; the model's FLOPs per call counted by ``torch.utils.flop_counter`` (not
    estimated), so achieved TFLOP/s = FLOPs x calls/s, against the ``matmul`` rate.
``logprob_drift``
    The same 3B policy: the server samples chunks in bf16 and stamps their log-probs; an
    fp32 copy scores them as the learner does (bf16 autocast over fp32 weights) and
    without autocast (the fp32 reference). Reported: |delta log-prob| per chunk (mean,
    max) and |ratio - 1| with ratio = exp(learner - server), the importance ratio PPO/GRPO
    clip at 0.2 before any update. Random weights: a trained model's drift may differ.
``weights``
    Moving the 3B policy's weights (bf16, ~7.5 GB) to a server on the same GPU: a raw
    device-to-device copy of the same bytes (the baseline); flatten + load_state_dict in
    one process (the --single-process bus); a CUDA IPC handle to a second process that
    copies out of it; chunkrl's same-device link (links/shared_weights.py: the buffer
    through CUDA IPC, the header and acknowledgement over gloo: ``shared``); chunkrl's
    weights group between two processes on the one GPU over gloo and over NCCL (two NCCL
    ranks on one device: whether NCCL takes it, and how fast, or its error, is the
    result).
``openvla_oft_7b_lora``
    OpenVLA-OFT on the OpenVLA-7B architecture (fused DINOv2 ViT-L/14 + SigLIP
    So400m/14 at 224 px, two images, Llama-2-7B; random weights, fp32 as the learner
    loads it) with LoRA rank 32 on every linear layer and gradient checkpointing: one
    ``Learner.step`` (bf16 autocast, micro-batches of 16, halved after an out-of-memory
    error) on a 32-chunk batch the policy acted in the synthetic env: seconds per step
    and peak memory, beside the start-up memory estimate of the same micro-batch
    (``models/memory.py``, its probes run on the GPU).
``launch``
    ``launch.py`` on configs/synthetic_grpo.yaml with every role on this GPU for
    --launch-seconds, with network.weights_backend=gloo, then with the default (NCCL
    between the learner and the server, two ranks on one GPU): exit code, updates, env
    steps/s (training env steps / --launch-seconds), and the log's last lines.

Figures go to benchmarks/RESULTS.md by hand with the GPU named. ``--dry-run`` runs every
section on the CPU with tiny shapes (tests/test_gpu_check.py), so the script is known to
work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_models import (QWEN25_VL_3B, full_size_policy, learner_batch,  # noqa: E402
                                     measure, random_obs)

SECTIONS = ("matmul", "qwen_oft_3b", "logprob_drift", "weights", "openvla_oft_7b_lora",
            "launch")
# A Qwen2.5-VL of the 3B's structure at CPU size (head_dim 64: mrope sections sum to 32).
QWEN25_VL_TINY = dict(
    QWEN25_VL_3B,
    text_config=dict(QWEN25_VL_3B["text_config"], hidden_size=128, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}),
    vision_config=dict(QWEN25_VL_3B["vision_config"], depth=2, hidden_size=64,
                       intermediate_size=128, num_heads=2, out_hidden_size=128,
                       fullatt_block_indexes=[1]))
# OpenVLA-7B: Llama-2-7B (vocabulary padded to 32064) and its timm featurizers' widths.
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                 max_position_embeddings=2048, rms_norm_eps=1e-5)
DINO_L14 = dict(embed_dim=1024, depth=24, mlp_hidden=4096)
SIGLIP_SO400M = dict(embed_dim=1152, depth=27, mlp_hidden=4304, attn_pool_mlp=4304)


class Check:
    """The run's settings and what the sections share (the device, the 3B policy)."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.policy = None  # the QwenOFT policy, built by qwen_oft_3b, reused after it
        self.tmp = Path(tempfile.mkdtemp(prefix="chunkrl-gpu-check-"))
        self.peak_tflops = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, repeats: int = 3) -> float:
        """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def peak_gib(self) -> float:
        if self.device.type != "cuda":
            return float("nan")
        return torch.cuda.max_memory_allocated() / 2**30

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def matmul(c: Check) -> dict:
    n = 512 if c.dry else 8192
    dtype = torch.float32 if c.dry else torch.bfloat16
    a = torch.randn(n, n, device=c.device, dtype=dtype)
    b = torch.randn(n, n, device=c.device, dtype=dtype)
    for _ in range(3):
        a @ b
    c.sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    c.sync()
    seconds = (time.perf_counter() - start) / 10
    c.peak_tflops = 2 * n**3 / seconds / 1e12
    return {"n": n, "dtype": str(dtype), "tflops": c.peak_tflops}


def _forward_flops(vlm, fn) -> int:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter`` counts them, with the VLM's
    attention switched to eager for the count (the counter's SDPA formula refuses the
    grouped-query shapes that transformers hands SDPA on CUDA; eager does the same math)."""
    from torch.utils.flop_counter import FlopCounterMode

    kernel = vlm.config._attn_implementation
    vlm.set_attn_implementation("eager")
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        return counter.get_total_flops()
    finally:
        vlm.set_attn_implementation(kernel)


def qwen_oft_3b(c: Check) -> dict:
    c.reset_peak()
    torch.manual_seed(0)
    began = time.perf_counter()
    c.policy = full_size_policy(c.device, "sdpa", QWEN25_VL_TINY if c.dry else QWEN25_VL_3B)
    c.policy.eval()
    out = {"build_s": time.perf_counter() - began,
           "params": sum(p.numel() for p in c.policy.parameters()), "batches": []}
    timing = SimpleNamespace(seconds=0.3 if c.dry else 1.0, repeats=1 if c.dry else 3)
    for b in c.args.batches:
        obs = random_obs(b, 224)
        prepared = c.policy.prepare(obs, c.device)
        with torch.no_grad():
            r = measure({"end_to_end": (lambda: c.policy.act(c.policy.prepare(obs, c.device),
                                                             False, 1.0), b),
                         "forward": (lambda: c.policy._heads(prepared), b)}, timing, c.device)
        flops = _forward_flops(c.policy.vlm, lambda: c.policy._heads(prepared))
        tflops = flops * r["forward"] / b / 1e12
        row = {"batch": b, "tokens_per_row": int(prepared["input_ids"].shape[1]),
               "end_to_end_chunks_s": r["end_to_end"], "forward_chunks_s": r["forward"],
               "flops_per_call": flops, "tflops": tflops,
               "of_matmul_peak": tflops / c.peak_tflops if c.peak_tflops else None}
        out["batches"].append(row)
        print(f"  B={b}: {r['end_to_end']:.1f} chunks/s end to end, {r['forward']:.1f} "
              f"model alone, {tflops:.1f} TFLOP/s", flush=True)
    out["peak_gib"] = c.peak_gib()
    return out


def logprob_drift(c: Check) -> dict:
    if c.policy is None:
        raise RuntimeError("needs qwen_oft_3b's policy (that section failed)")
    b = 8 if c.dry else 32
    obs = random_obs(b, 224)
    with torch.no_grad():
        prepared = c.policy.prepare(obs, c.device)
        served = c.policy.act(prepared, False, 1.0)  # bf16 weights, as a server
        ref = copy.deepcopy(c.policy).float()  # fp32 weights, as the learner loads them
        with torch.autocast(c.device.type, dtype=torch.bfloat16):
            learner = ref.evaluate(prepared, served.actions, 1.0).logprobs.float()
        exact = ref.evaluate(prepared, served.actions, 1.0).logprobs.float()
    del ref
    server = served.logprobs.float()

    def gap(x, y):
        d = (x - y).abs().reshape(-1)
        return {"mean": float(d.mean()), "max": float(d.max())}

    ratio = torch.exp(learner - server).reshape(-1)
    return {"rows": b, "server_vs_fp32": gap(server, exact),
            "learner_autocast_vs_fp32": gap(learner, exact),
            "learner_vs_server": gap(learner, server),
            "ratio_abs_dev_mean": float((ratio - 1).abs().mean()),
            "ratio_outside_clip_0.2": float(((ratio - 1).abs() > 0.2).float().mean()),
            "logprob_scale": float(server.abs().mean())}


def _openvla_7b(c: Check):
    """OpenVLA-OFT on the 7B architecture (random), its tokenizer and statistics taken
    from a tiny OpenVLA directory (the prompt's ids are all below 640)."""
    import dataclasses

    from configs import ModelConfig
    from models import build_policy
    from models.openvla_oft import OpenVLAOFTPolicy
    from models.prismatic import PrismaticVisionBackbone, PrismaticVLM
    from models.tiny_prismatic import make_prismatic
    from models.timm_vit import TimmViT
    from models.vla_loading import _finish

    tiny_dir = make_prismatic(c.tmp / "openvla", image_size=224).path
    cfg = ModelConfig(kind="openvla_oft", model_path=str(tiny_dir), unnorm_key="libero_spatial",
                      use_wrist_image=True, lora_rank=c.args.lora_rank,
                      gradient_checkpointing=c.args.checkpointing)
    tiny = build_policy(dataclasses.replace(cfg, lora_rank=0, gradient_checkpointing=False))
    if c.dry:
        _finish(tiny, cfg)
        return tiny.to(c.device)
    from transformers import LlamaConfig, LlamaForCausalLM

    vision = tiny.vlm.vision_backbone
    with c.device:
        backbone = PrismaticVisionBackbone(
            TimmViT(dataclasses.replace(vision.featurizer.spec, **DINO_L14)),
            TimmViT(dataclasses.replace(vision.fused_featurizer.spec, **SIGLIP_SO400M)),
            vision.num_images)
        llm = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B, pad_token_id=32000))
        vlm = PrismaticVLM(backbone, llm)
    policy = OpenVLAOFTPolicy(vlm, tiny.inputs, 8, 7, 32000, True, 0, False, tiny.norm)
    _finish(policy, cfg)
    return policy.to(c.device)


def openvla_oft_7b_lora(c: Check) -> dict:
    from configs import LearnerConfig
    from learner.core import Learner

    c.policy = None  # the 3B is not needed any more: its memory goes back
    c.reset_peak()
    torch.manual_seed(0)
    began = time.perf_counter()
    policy = _openvla_7b(c)
    built = time.perf_counter() - began
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    weights_gib = c.peak_gib()
    n = 8 if c.dry else 32
    batch = learner_batch(policy, n, 224, c.device, wrist=True)
    out = {"params": params, "trainable": trainable, "lora_rank": c.args.lora_rank,
           "gradient_checkpointing": c.args.checkpointing, "build_s": built,
           "weights_gib": weights_gib, "batch": n, "tries": []}
    micro = c.args.micro_batch
    while micro >= 1:  # halved after an out-of-memory error
        estimate = _estimate(c, policy, micro)  # probed on this device, before the step
        c.reset_peak()
        learner = Learner(policy, LearnerConfig(micro_batch_size=micro), 1.0, c.device)
        try:
            seconds = c.timed(lambda: learner.step(batch), repeats=1 if c.dry else 2)
        except torch.OutOfMemoryError:
            out["tries"].append({"micro_batch": micro, "error": "out of memory",
                                 "peak_gib": c.peak_gib(), **estimate})
            del learner
            micro //= 2
            continue
        out["tries"].append({"micro_batch": micro, "step_s": seconds, "samples_s": n / seconds,
                             "peak_gib": c.peak_gib(), **estimate})
        return out
    return out


def _estimate(c: Check, policy, micro: int) -> dict:
    """The learner's start-up memory estimate (models/memory.py) at micro-batch ``micro``,
    its probes run on this device: to hold against the step's measured peak."""
    from configs import config_from_dict
    from models.memory import GIB, learner_estimate

    cfg = config_from_dict({"learner": {"micro_batch_size": micro},
                            "env": {"image_size": 224, "wrist_camera": True}})
    try:
        est = learner_estimate(policy, cfg, on_cuda=c.device.type == "cuda")
    except torch.OutOfMemoryError:
        return {"estimate_error": "out of memory in the probe"}
    return {"estimate_gib": est.total / GIB, "estimate": est.describe()}


def _peer(kind: str, rank: int, store_path: str, numel: int, handle, reply) -> None:
    """One process of the ``weights`` section's pairs: ``kind`` ipc (rank 1 only: copy out
    of the buffer whose CUDA IPC handle comes on ``handle``) or gloo/nccl (chunkrl's
    weights group of two; rank 0 broadcasts ``numel`` bf16 elements, rank 1 receives).
    Puts (rank, median seconds of 3, error) on ``reply``."""
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        buf = torch.empty(numel, dtype=torch.bfloat16, device=device)
        if kind == "ipc":
            src = handle.get()  # the parent's buffer, mapped by its CUDA IPC handle
            step = lambda: buf.copy_(src)  # noqa: E731
        elif kind == "shared":
            step = _shared_step(rank, store_path, buf, device)
        else:
            from links.weights import broadcast, make_group

            group = make_group(torch.distributed.FileStore(store_path, 2), rank, 2, kind, 30.0)
            step = lambda: broadcast(group, buf)  # noqa: E731
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        reply.put((rank, float(np.median(times)), None))
    except Exception as exc:  # reported as the section's result
        reply.put((rank, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))


def _shared_step(rank: int, store_path: str, buf: torch.Tensor, device: torch.device):
    """One update of chunkrl's shared-memory weights link (links/shared_weights.py) on
    ``buf``: rank 0 writes it into the shared buffer, sends the header and waits for the
    acknowledgement; rank 1 receives the header, copies out and acknowledges."""
    from configs import config_from_dict
    from links.weights import broadcast, form_link

    cfg = config_from_dict({"network": {"weights_shared": "same_host",
                                        "weights_backend": "gloo"}})
    layout = {str(buf.dtype): [("flat", buf.numel(), (buf.numel(),))]}
    link = form_link(torch.distributed.FileStore(store_path, 2), rank, cfg, device, layout)
    if link.shared is None:
        raise RuntimeError("the shared buffers were not mapped")
    header = torch.zeros(2, dtype=torch.int64, device=device)
    shared = link.shared.buffers[0]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        if rank == 0:
            shared.copy_(buf)
            sync()
            broadcast(link.group, header)
            broadcast(link.group, torch.zeros_like(header), root=1)
        else:
            broadcast(link.group, header)
            buf.copy_(shared)
            sync()
            broadcast(link.group, header, root=1)
    return step


def _two_process(c: Check, kind: str, buf: torch.Tensor) -> dict:
    """Move ``buf``'s bytes ``kind``-wise between processes (see :func:`_peer`; this one
    takes no part in a process group, so an NCCL failure cannot take it down)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    handle, reply = ctx.Queue(), ctx.Queue()
    store = str(c.tmp / f"store-{kind}")
    ranks = [1] if kind == "ipc" else [0, 1]
    peers = [ctx.Process(target=_peer, args=(kind, r, store, buf.numel(), handle, reply),
                         daemon=True) for r in ranks]
    for peer in peers:
        peer.start()
    if kind == "ipc":
        handle.put(buf)  # torch.multiprocessing sends a CUDA tensor as an IPC handle
    got: dict = {}
    try:
        for _ in ranks:
            rank, seconds, error = reply.get(timeout=150)
            got[rank] = (seconds, error)
    except Exception as exc:
        got[-1] = (None, f"no answer: {type(exc).__name__}")
    for peer in peers:
        peer.join(timeout=20)
        if peer.is_alive():
            peer.kill()
    seconds = got.get(1, (None, None))[0]
    errors = sorted({e for _, e in got.values() if e})
    gb = buf.numel() * buf.element_size() / 1e9
    return {"seconds": seconds, "gb_s": gb / seconds if seconds else None,
            "error": "; ".join(errors) or None}


def weights(c: Check) -> dict:
    from links.weights import flat_layout, flatten, unflatten

    model = c.policy if c.policy is not None else full_size_policy(
        c.device, "sdpa", QWEN25_VL_TINY if c.dry else QWEN25_VL_3B)
    state = model.state_dict()
    layout = flat_layout(state)
    buffers = flatten(state)
    nbytes = sum(b.numel() * b.element_size() for b in buffers)
    flat = buffers[0]  # the bf16 buffer: all of it but a few fp32 entries, if any
    out = {"bytes": nbytes, "dtypes": list(layout)}
    copy_target = torch.empty_like(flat)
    out["raw_copy_s"] = c.timed(lambda: copy_target.copy_(flat))
    out["flatten_s"] = c.timed(lambda: flatten(state, out=buffers))
    out["load_state_dict_s"] = c.timed(lambda: model.load_state_dict(unflatten(layout, buffers)))
    if c.device.type == "cuda":
        out["ipc"] = _two_process(c, "ipc", flat)
    else:
        out["ipc"] = {"error": "CUDA IPC needs a GPU (dry run)"}
    out["gloo"] = _two_process(c, "gloo", flat)
    out["shared"] = _two_process(c, "shared", flat)  # chunkrl's same-device link
    if c.device.type == "cuda":
        out["nccl"] = _two_process(c, "nccl", flat)
    raw = out["raw_copy_s"]
    out["ratios_to_raw_copy"] = {
        "flatten+load": (out["flatten_s"] + out["load_state_dict_s"]) / raw,
        **{k: out[k]["seconds"] / raw for k in ("ipc", "shared", "gloo", "nccl")
           if k in out and out[k].get("seconds")}}
    return out


def _launch_once(c: Check, extra: list[str], log_dir: Path) -> dict:
    seconds = c.args.launch_seconds
    cmd = [sys.executable, str(ROOT / "launch.py"), "--config",
           str(ROOT / "configs/synthetic_grpo.yaml"), f"run.log_dir={log_dir}",
           f"run.max_duration_s={seconds}", "run.total_updates=100000", *extra]
    if c.dry:
        cmd += ["learner.device=cpu", "inference.device=cpu"]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=seconds + 45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
    wall = time.perf_counter() - began
    out = {"command": " ".join(cmd[1:]), "exit": proc.returncode, "wall_s": wall,
           "log_tail": text.splitlines()[-12:]}
    summary = log_dir / "learner_summary.json"
    if summary.exists():
        got = json.loads(summary.read_text())
        out.update({k: got.get(k) for k in ("updates", "episodes_trained", "trained_twice",
                                            "training_env_steps")})
        out["env_steps_s"] = (got.get("training_env_steps") or 0) / seconds
    return out


def launch(c: Check) -> dict:
    c.policy = None
    c.reset_peak()
    extra = {"gloo": ["network.weights_backend=gloo"], "default": []}
    return {name: _launch_once(c, extra[name], c.tmp / f"launch_{name}")
            for name in c.args.launch_runs}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (no GPU needed)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="subset of %(default)s")
    p.add_argument("--batches", default="8,32,64", help="QwenOFT inference batches")
    p.add_argument("--lora-rank", type=int, default=32, help="OpenVLA-OFT LoRA rank (32)")
    p.add_argument("--micro-batch", type=int, default=16, help="learner micro-batch (16)")
    p.add_argument("--launch-seconds", type=int, default=45, help="each launch's length (45)")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="OpenVLA-OFT learner without gradient checkpointing")
    p.add_argument("--launch-runs", default="gloo,default",
                   help="launch's weights backends: gloo and/or default (%(default)s)")
    p.add_argument("--json", metavar="PATH", help="write the results here (after each section)")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.launch_runs = [r for r in args.launch_runs.split(",") if r]
    if set(args.launch_runs) - {"gloo", "default"}:
        p.error("--launch-runs: gloo, default or gloo,default")
    if not args.sections or set(args.sections) - set(SECTIONS):
        p.error(f"--sections: a comma-separated subset of {','.join(SECTIONS)}")
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error("--batches: comma-separated integers, e.g. 8,32,64")
    if min(args.batches + [args.lora_rank, args.micro_batch, args.launch_seconds]) < 1:
        p.error("--batches, --lora-rank, --micro-batch, --launch-seconds: >= 1")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA GPU here (torch.cuda.is_available() is False): run with --dry-run")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    c = Check(args)
    if c.dry:
        torch.set_num_threads(1)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "dry_run": c.dry,
            "device": torch.cuda.get_device_name(0) if not c.dry else "cpu"}
    results: dict = {"meta": meta}
    print(f"# chunkrl GPU check on {meta['device']}: torch {meta['torch']}, transformers "
          f"{meta['transformers']}, Python {meta['python']}", flush=True)
    sections = {name: globals()[name] for name in SECTIONS if name in args.sections}
    failed = 0
    for name, fn in sections.items():
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        try:
            results[name] = fn(c)
        except Exception as exc:  # recorded; the next section still runs
            failed += 1
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        results[name]["section_s"] = time.perf_counter() - began
        print(json.dumps(results[name], indent=1, default=str)[:3000], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(f"# {len(sections) - failed} of {len(sections)} sections ran"
          + (f"; {failed} failed (their error is in the results)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
