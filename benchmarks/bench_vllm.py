"""Action chunks/s of the token_ar policy: vLLM (inference.backend=vllm) against torch.

What it measures
    One tiny random Qwen2 causal LM (models/tiny_vla.py ``make_qwen2_lm``, --hidden wide,
    --layers deep, heads of 32 dims) saved to a temporary folder and served two ways from
    it, for each batch B (--batches) and each chunk length T x D (--tokens: 1x7 = 7 tokens,
    8x7 = 56), with sampled actions at temperature 1:
      torch  ``InferenceCore.infer``: prompts, then ``TokenARPolicy.act`` (a KV cache,
             one forward step per action token, the whole batch together)
      vllm   ``VLLMCore.infer``: the same prompts, one ``LLM.generate`` of B requests
             (allowed ids, processed log-probs, a seed per row), in this process
    chunks/s = B / seconds a call; median of --repeats calls after a warm-up call, the two
    backends alternating. ratio = vllm / torch. On CPU this is a smoke figure (vLLM's CPU
    kernels against PyTorch's on a model this small); the figure that matters is a GPU's,
    not measured yet (this script runs on CPU only).

How to run (in the vLLM environment)
    .venv-vllm/bin/python benchmarks/bench_vllm.py                  # ~3 min on 2 cores
    .venv-vllm/bin/python benchmarks/bench_vllm.py --batches 8 --repeats 1   # smoke
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, markdown, stamp

sys.path.insert(0, str(ROOT))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="8,32,64", help="batch sizes B (8,32,64)")
    p.add_argument("--tokens", default="1x7,8x7", help="chunks TxD (1x7,8x7)")
    p.add_argument("--hidden", type=int, default=256, help="LM width (256)")
    p.add_argument("--layers", type=int, default=4, help="LM layers (4)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls each (3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)  # before vLLM, which disables set_num_threads
    from configs import ModelConfig, VLLMConfig
    from envs.base import EnvObs
    from inference_server.core import InferenceCore
    from inference_server.vllm_core import VLLMCore
    from models import build_policy
    from models.tiny_vla import make_qwen2_lm

    print(f"# chunkrl vLLM vs torch benchmark: {stamp()}", flush=True)
    folder = make_qwen2_lm(Path(tempfile.mkdtemp(prefix="chunkrl-bench-vllm-")) / "lm",
                           hidden=args.hidden, layers=args.layers)
    rng = np.random.default_rng(0)
    rows, vllm_core = [], None
    for shape in args.tokens.split(","):
        t, d = (int(x) for x in shape.split("x"))
        cfg = ModelConfig(kind="token_ar", model_path=str(folder), unnorm_key="tiny",
                          num_action_chunks=t, action_dim=d)
        policy = build_policy(cfg).eval()
        torch_core = InferenceCore(policy, torch.device("cpu"), 1.0, 8)
        if vllm_core is None:  # one engine (one per process): a chunk's length is per request
            vllm_core = VLLMCore(policy, str(folder), 1.0, 8,
                                 engine=VLLMConfig(max_model_len=256, kv_cache_mb=256))
        vllm_core.policy = policy
        for b in (int(x) for x in args.batches.split(",")):
            obs = EnvObs(np.zeros((b, 16, 16, 3), np.uint8),
                         rng.uniform(-1, 1, (b, 8)).astype(np.float32),
                         ["pick up the black bowl and place it on the plate"] * b)
            with torch.no_grad():
                s_torch = timed(lambda: torch_core.infer(obs, False), args.repeats)
            s_vllm = timed(lambda: vllm_core.infer(obs, False), args.repeats)
            rows.append({"tokens": t * d, "batch": b, "torch": b / s_torch,
                         "vllm": b / s_vllm, "ratio": s_torch / s_vllm})
            r = rows[-1]
            print(f"{t * d} tokens, batch {b}: torch {r['torch']:.1f} chunks/s, vllm "
                  f"{r['vllm']:.1f} chunks/s, vllm/torch {r['ratio']:.2f}", flush=True)
    # vLLM's CPU worker may lower torch's threads for the process (both paths share it).
    print(markdown(f"token_ar chunks/s, Qwen2 hidden {args.hidden} x {args.layers} layers, "
                   f"CPU, {torch.get_num_threads()} torch threads in the timed calls "
                   f"({args.threads} asked); median of {args.repeats}", rows,
                   {"action tokens": "tokens", "batch": "batch", "torch chunks/s": "torch",
                    "vLLM chunks/s": "vllm", "vLLM/torch": "ratio"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
