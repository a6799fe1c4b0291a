"""The inference server's sustained throughput under N concurrent actors against the bare
policy forward at the same batch size.

What it measures
    served  A real inference server process (``launch.py --role inference``) with the
            small CPU policy; this process is the learner's end of the weights group and
            sends it its weights. A client process holds N DEALER sockets, one per
            simulated actor (identities actor-0..N-1), each keeping one ObsRequest of
            --rows rows in flight (random 224x224 images, 8-D states, instructions) and
            sending the next as soon as its reply arrives. Chunks/s = rows answered over
            --seconds after a warm-up; the server reports its mean batch (rows a pass).
    bare    In a fresh process of its own, after the server has stopped:
            ``policy.act(policy.prepare(obs), False, 1.0)`` on one batch of that mean size
            (rounded), same policy, images and torch threads: the forward pass with
            nothing around it.
    ratio   served / bare: what batching, decoding, validation, replies and the serving
            loop cost on top of the forward pass. Goal >= 0.9 once the server is the
            bottleneck (N x rows well above max_batch); with fewer actors the server also
            waits for the clients' turnaround, which the ratio shows too.
    busy    the share of the measured window the server spent in its forward passes
            (its profile): the serving loop's overhead under the same CPU conditions,
            free of the run-to-run noise between the two measurements.
            Beside it, the rate of the server's forward passes alone: against the bare
            rate, what sharing the two cores with the clients and the sockets' I/O
            threads costs the forward pass itself.
    Each N: --repeats rounds of bare, served, bare (the bare rate is the mean of the two
    around the served one: this machine's speed drifts by +-15% between runs); medians.

How to run
    .venv/bin/python benchmarks/bench_batching.py              # N = 4, 8, 16; ~2.5 min
    .venv/bin/python benchmarks/bench_batching.py --actors 8 --seconds 3   # one point
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import multiprocessing as mp
import queue
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import BASE_CONFIG, ROOT, markdown, stamp

import numpy as np


def overrides(tmp: Path, run_id: str, args) -> list[str]:
    return [f"run.log_dir={tmp / 'run'}", f"run.run_id={run_id}",
            f"network.ipc_dir={tmp / 'ipc'}", f"inference.max_batch={args.max_batch}",
            f"inference.max_wait_ms={args.max_wait_ms}", f"env.image_size={args.image_size}",
            "inference.device=cpu", "network.weights_timeout_s=120", "profile.enabled=true",
            f"profile.duration_s={args.warmup + args.seconds + 60}"]


def random_obs(rows: int, size: int, seed: int = 0):
    from envs.base import EnvObs

    rng = np.random.default_rng(seed)
    return EnvObs(rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
                  rng.standard_normal((rows, 8), dtype=np.float32),
                  ["move to the red square"] * rows)


def clients_main(cfg_args: list[str], actors: int, rows: int, warmup_s: float,
                 seconds: float, out) -> None:
    """N simulated actors, one request each in flight; puts (rows answered, seconds)."""
    import zmq

    from configs import load_config
    from links import wiring
    from protocol.messages import ErrorReply, ObsRequest

    cfg = load_config(BASE_CONFIG, cfg_args)
    ctx = zmq.Context()
    obs = random_obs(rows, cfg.env.image_size)
    eps = [wiring.actor_inference_endpoint(ctx, cfg, k, wiring.inference_address(cfg, 0, False))
           for k in range(actors)]
    poller = zmq.Poller()
    for ep in eps:
        poller.register(ep.sock, zmq.POLLIN)
    by_sock = {ep.sock: ep for ep in eps}
    seq = 0

    def send(ep):
        nonlocal seq
        seq += 1
        ep.send(ObsRequest(seq, False, obs.task_descriptions, obs.main_images, obs.states))

    for ep in eps:
        send(ep)
    start = time.perf_counter()
    begin, answered = start + warmup_s, 0
    while time.perf_counter() < begin + seconds:
        for sock, _ in poller.poll(1000):
            ep = by_sock[sock]
            reply = ep.recv().msg
            if isinstance(reply, ErrorReply):
                raise RuntimeError(f"server error: {reply.message}")
            if time.perf_counter() >= begin:
                answered += len(reply.actions)
            send(ep)
    out.put((answered, time.perf_counter() - begin))
    for ep in eps:
        ep.close()
    ctx.term()


def serve_and_load(args, actors: int) -> tuple[float, float, float, float]:
    """(served chunks/s, the server's mean batch rows, the share of the time its forward
    passes took, their own chunks/s) with ``actors`` simulated actors."""
    import torch

    from configs import load_config
    from models import build_policy
    from harness import LearnerStandIn

    tmp = Path(tempfile.mkdtemp(prefix="chunkrl-bench-batching-"))
    run_id = uuid.uuid4().hex[:8]
    cfg_args = overrides(tmp, run_id, args)
    cfg = load_config(BASE_CONFIG, cfg_args)
    server = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config",
                               str(BASE_CONFIG), *cfg_args, "--role", "inference"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        torch.manual_seed(0)
        sender = LearnerStandIn(cfg, build_policy(cfg.model), servers=1)
        out = mp.get_context("spawn").Queue()
        client = mp.get_context("spawn").Process(
            target=clients_main, args=(cfg_args, actors, args.rows, args.warmup, args.seconds,
                                       out))
        client.start()
        deadline = time.monotonic() + args.warmup + args.seconds + 120
        while True:
            try:
                answered, elapsed = out.get(timeout=1.0)
                break
            except queue.Empty:
                if not client.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the client process died or hung; see its output")
        client.join(30)
        sender.close()  # the learner's end: the server stops
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    stats = json.loads((tmp / "run" / "inference-0.json").read_text())
    prof = json.loads((tmp / "run" / "profile" / "inference-0.json").read_text())
    forward = [sp for sp in prof["spans"] if sp[0] == "forward"]
    # The share of the measured window the server spent in its forward passes, and the
    # rate of those passes alone (rows over their time).
    t0 = forward[-1][1] + forward[-1][2] - elapsed
    window = [(d, a["rows"]) for _, start, d, _, a in forward if start >= t0]
    busy = sum(d for d, _ in window) / elapsed
    in_server = sum(r for _, r in window) / max(sum(d for d, _ in window), 1e-9)
    return answered / elapsed, stats["mean_batch_rows"], busy, in_server


def bare_main(args, rows: int, out) -> None:
    """In a fresh process, as the server was: puts :func:`bare_forward`'s rate."""
    out.put(bare_forward(args, rows))


def bare_in_process(args, rows: int) -> float:
    """:func:`bare_forward` in a spawned process of its own (a fresh interpreter, one torch
    thread, nothing else of this benchmark's in it), once the server has gone."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=bare_main, args=(args, rows, out))
    proc.start()
    try:
        return out.get(timeout=args.seconds + 120)
    finally:
        proc.join(30)


def bare_forward(args, rows: int) -> float:
    """Chunks/s of ``act(prepare(obs))`` on one batch of ``rows``."""
    import torch

    torch.set_num_threads(1)  # as the server (run.torch_threads)
    from configs import load_config
    from models import build_policy

    cfg = load_config(BASE_CONFIG, [f"env.image_size={args.image_size}"])
    torch.manual_seed(0)
    policy = build_policy(cfg.model).eval()
    obs, device = random_obs(rows, args.image_size), torch.device("cpu")
    with torch.no_grad():
        policy.act(policy.prepare(obs, device), False, 1.0)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            policy.act(policy.prepare(obs, device), False, 1.0)
            calls += 1
    return rows * calls / (time.perf_counter() - start)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--actors", default="4,8,16", help="concurrent actors N (4,8,16)")
    p.add_argument("--rows", type=int, default=16, help="rows a request: a stage's envs (16)")
    p.add_argument("--max-batch", type=int, default=64, help="inference.max_batch (64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="inference.max_wait_ms (5)")
    p.add_argument("--image-size", type=int, default=224, help="images, H = W (224)")
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement (4)")
    p.add_argument("--repeats", type=int, default=3, help="served/bare pairs; medians (3)")
    p.add_argument("--warmup", type=float, default=2.0, help="before measuring (2)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.actors = [int(a) for a in args.actors.split(",") if a.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# chunkrl batching benchmark: {stamp()}", flush=True)
    rows = []
    for n in args.actors:
        served, bare, batches, busy, inside = [], [], [], [], []
        for _ in range(args.repeats):  # bare, served, bare: the machine drifts
            before = bare_in_process(args, args.max_batch)
            rate, batch, share, fwd = serve_and_load(args, n)
            after = bare_in_process(args, max(1, round(batch)))
            served.append(rate)
            batches.append(batch)
            busy.append(share)
            inside.append(fwd)
            bare.append((before + after) / 2)
            print(f"N={n}: served {rate:,.0f} chunks/s at a mean batch of {batch:.1f} (its "
                  f"forward passes alone {fwd:,.0f}); bare forward {before:,.0f} before, "
                  f"{after:,.0f} after", flush=True)
        s, b = statistics.median(served), statistics.median(bare)
        rows.append({"actors": n, "rows": args.rows, "batch": statistics.median(batches),
                     "served": s, "bare": b, "ratio": s / b, "runs": args.repeats,
                     "busy": statistics.median(busy), "inside": statistics.median(inside)})
    print(markdown(f"Batching: one server, N actors of {args.rows} rows a request, "
                   f"{args.image_size}px images, max_batch {args.max_batch}", rows,
                   {"actors N": "actors", "rows/request": "rows", "runs": "runs",
                    "mean batch": "batch",
                    "served chunks/s": "served", "bare forward chunks/s": "bare",
                    "served/bare": "ratio", "server time in forward": "busy",
                    "its forward passes, chunks/s": "inside"}))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
