"""One weight update (learner -> every inference server, applied) against a raw
torch.distributed broadcast of the same bytes, and the pause it causes in serving.

What it measures
    update  This process is the learner's end of the weights group (rank 0,
            ``links.weight_hub.WeightHub``, one 2-rank group per server); K real
            inference servers (``launch.py --role inference``, idle, profiled) are the
            other ranks. One
            update = ``sender.send(version, policy)``: flatten the state dict per dtype,
            broadcast a header and the buffers; each server's receiving thread rebuilds
            the state dict and wakes the serving loop, which loads it between batches.
            Latency = from the send to the last server's end of loading
            (``weights_apply`` in its profile; wall clocks of one host).
    raw     The same number of bytes as one float32 buffer, broadcast with gloo from this
            process to K plain receiver processes (a process group of their own, the
            buffer allocated once, a size header queued before it as chunkrl's is);
            latency = from the broadcast to the last receiver holding the data.
    ratio   update / raw (medians over --updates of each, alternating). Goal <= 1.2.
            Each size is measured --repeats times (fresh processes each time); the
            table gives the median ratio and its range, so one slow run is not the record.
    pause   How long loading new weights holds a server's serving loop (the
            ``weights_apply`` span) against the latency of one batch of max_batch rows
            (the bare forward pass at that batch, in this process). Goal <= 1.
    Three sizes: the default small CPU policy (0.27 MB), and the same policy with a
    wider MLP (``model.cnn.hidden_dim``): 18 and 70 MB.

How to run
    .venv/bin/python benchmarks/bench_weights.py                 # ~3 min (3 repeats)
    .venv/bin/python benchmarks/bench_weights.py --servers 1 --updates 5
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import BASE_CONFIG, ROOT, markdown, stamp


def raw_receiver(store_path: str, rank: int, world: int, out_path: str) -> None:
    """Join the raw group; receive broadcasts until a size of -1; write the done times."""
    import torch
    import torch.distributed as dist

    from links.weights import make_group

    group = make_group(dist.FileStore(store_path, world), rank, world, "gloo", 120)
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    done, buf = [], torch.empty(0)
    while True:
        header = torch.zeros(1, dtype=torch.int64)
        group.broadcast([header], opts).wait()
        if int(header[0]) < 0:
            break
        if buf.numel() != int(header[0]):  # allocated once: the raw floor
            buf = torch.empty(int(header[0]), dtype=torch.float32)
        group.broadcast([buf], opts).wait()
        done.append(time.time())
    Path(out_path).write_text(json.dumps(done))


def forward_ms(policy, rows: int, image_size: int) -> float:
    """One batch of ``rows``: ``act(prepare(obs))`` in ms (median of 5)."""
    import numpy as np
    import torch

    from envs.base import EnvObs

    rng = np.random.default_rng(0)
    obs = EnvObs(rng.integers(0, 256, (rows, image_size, image_size, 3), dtype=np.uint8),
                 np.zeros((rows, 8), np.float32), ["move to the red square"] * rows)
    times = []
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            policy.act(policy.prepare(obs, torch.device("cpu")), False, 1.0)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


PARTS = ("to_header_ms", "recv_ms", "handover_ms", "apply_ms")


def breakdown(sent: float, recv: tuple[float, float], apply: tuple[float, float]) -> list[float]:
    """One server's latency of one update in four consecutive parts (ms), which sum to it:
    send -> header received (the learner's state dict and flattening, the header's trip),
    header -> buffers received and handed to the serving thread (``weights_recv``),
    -> the serving loop starts loading (the wake-up), and the load (``weights_apply``)."""
    return [(recv[0] - sent) * 1e3, (recv[1] - recv[0]) * 1e3, (apply[0] - recv[1]) * 1e3,
            (apply[1] - apply[0]) * 1e3]


def flatten_ms(policy) -> float:
    """The learner's share before anything is sent: ``state_dict`` and flattening into
    kept buffers, as ``WeightHub`` does on CPU (median of 20, ms)."""
    from links.weights import flatten

    out = flatten(policy.state_dict())
    times = []
    for _ in range(20):
        start = time.perf_counter()
        flatten(policy.state_dict(), out)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_size(args, hidden: int) -> dict:
    import torch
    import torch.distributed as dist

    from configs import load_config
    from models import build_policy
    from harness import LearnerStandIn
    from links.weights import flatten, make_group

    tmp = Path(tempfile.mkdtemp(prefix="chunkrl-bench-weights-"))
    cfg_args = [f"run.log_dir={tmp / 'run'}", f"run.run_id={uuid.uuid4().hex[:8]}",
                f"network.ipc_dir={tmp / 'ipc'}", f"inference.num_servers={args.servers}",
                f"model.cnn.hidden_dim={hidden}", "inference.device=cpu", "profile.enabled=true",
                "profile.duration_s=3600", "network.weights_timeout_s=120"]
    cfg = load_config(BASE_CONFIG, cfg_args)
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    elements = sum(b.numel() for b in flatten(policy.state_dict()))
    servers = [subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config",
                                 str(BASE_CONFIG), *cfg_args, "--role", "inference",
                                 "--index", str(i)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, cwd=ROOT)
               for i in range(args.servers)]
    spawn = mp.get_context("spawn")
    world = 1 + args.servers
    store = str(tmp / "raw.store")
    raws = [spawn.Process(target=raw_receiver, args=(store, r, world, str(tmp / f"raw-{r}.json")))
            for r in range(1, world)]
    for p in raws:
        p.start()
    try:
        sender = LearnerStandIn(cfg, policy, args.servers)  # the servers' first weights
        raw = make_group(dist.FileStore(store, world), 0, world, "gloo", 120)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        time.sleep(1.0)
        raw_sent, update_sent, send_ms = [], [], []
        payload = torch.randn(elements)
        for v in range(1, args.updates + 1):
            raw_sent.append(time.time())
            works = [raw.broadcast([torch.tensor([elements], dtype=torch.int64)], opts),
                     raw.broadcast([payload], opts)]
            for work in works:
                work.wait()
            time.sleep(args.gap_s)
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(1e-3)  # new weights each time
            update_sent.append(time.time())
            sender.send(v, policy)
            send_ms.append((time.time() - update_sent[-1]) * 1e3)
            time.sleep(args.gap_s)
        raw.broadcast([torch.tensor([-1], dtype=torch.int64)], opts).wait()
        sender.close()
        for s in servers:
            s.wait(60)
        for p in raws:
            p.join(60)
    finally:
        for s in servers:
            if s.poll() is None:
                s.kill()
    raw_done = [json.loads((tmp / f"raw-{r}.json").read_text()) for r in range(1, world)]
    raw_ms = [(max(d[k] for d in raw_done) - raw_sent[k]) * 1e3 for k in range(args.updates)]
    applied: dict = {}
    pauses = []
    parts: dict = {k: [] for k in PARTS}
    for i in range(args.servers):
        prof = json.loads((tmp / "run" / "profile" / f"inference-{i}.json").read_text())
        recv, apply = {}, {}
        for name, start, dur, _, span_args in prof["spans"]:
            v = span_args.get("version", 0)
            if v > 0 and name in ("weights_recv", "weights_apply"):
                (recv if name == "weights_recv" else apply)[v] = (start, start + dur)
        for v, (start, end) in apply.items():
            applied[v] = max(applied.get(v, 0.0), end)
            pauses.append((end - start) * 1e3)
            if v in recv:  # where this server's latency of update v went
                for key, ms in zip(PARTS, breakdown(update_sent[v - 1], recv[v], (start, end))):
                    parts[key].append(ms)
    missing = [v for v in range(1, args.updates + 1) if v not in applied]
    if missing:
        raise RuntimeError(f"servers never applied versions {missing}")
    update_ms = [(applied[v] - update_sent[v - 1]) * 1e3 for v in range(1, args.updates + 1)]
    torch.set_num_threads(1)
    batch_ms = forward_ms(policy.eval(), cfg.inference.max_batch, cfg.env.image_size)
    upd, rw = statistics.median(update_ms), statistics.median(raw_ms)
    flat = flatten_ms(policy)
    return {**{key: statistics.median(ms) for key, ms in parts.items()}, "flatten_ms": flat,
            "hidden": hidden, "mb": elements * 4 / 1e6, "servers": args.servers,
            "updates": args.updates, "raw_ms": rw, "update_ms": upd, "ratio": upd / rw,
            "send_ms": statistics.median(send_ms), "pause_ms": statistics.median(pauses),
            "pause_max_ms": max(pauses), "batch_ms": batch_ms,
            "pause_vs_batch": max(pauses) / batch_ms}


def summarise(runs: list[dict]) -> dict:
    """One row for the repeats of a size: medians, the ratio's range, the worst pause."""
    ratios = sorted(r["ratio"] for r in runs)
    row = {k: statistics.median(r[k] for r in runs)
           for k in ("raw_ms", "update_ms", "send_ms", "pause_ms", "batch_ms", "flatten_ms",
                     *PARTS)}
    row.update(hidden=runs[0]["hidden"], mb=runs[0]["mb"], runs=ratios,
               ratio=statistics.median(ratios),
               ratio_text=f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})",
               pause_max_ms=max(r["pause_max_ms"] for r in runs),
               pause_vs_batch=max(r["pause_vs_batch"] for r in runs))
    row["header_text"] = f"{row['to_header_ms']:.2f} ({row['flatten_ms']:.2f})"
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=2, help="inference servers K (2)")
    p.add_argument("--updates", type=int, default=20, help="updates of each kind (20)")
    p.add_argument("--hidden", default="128,2048,4096",
                   help="model.cnn.hidden_dim sizes (128,2048,4096)")
    p.add_argument("--gap-s", type=float, default=0.2, help="pause between sends (0.2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each size (3)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    args.hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# chunkrl weights benchmark: {stamp()}", flush=True)
    rows = []
    for hidden in args.hidden:
        runs = []
        for k in range(args.repeats):
            runs.append(bench_size(args, hidden))
            r = runs[-1]
            print(f"{r['mb']:.1f} MB, run {k + 1}/{args.repeats}: update {r['update_ms']:.1f} "
                  f"ms, raw {r['raw_ms']:.1f} ms, ratio {r['ratio']:.2f}, pause "
                  f"{r['pause_ms']:.2f} ms (max {r['pause_max_ms']:.2f}), batch "
                  f"{r['batch_ms']:.1f} ms", flush=True)
        rows.append(summarise(runs))
    print(markdown(f"Weights: learner -> {args.servers} inference servers (gloo, one host), "
                   f"medians of {args.updates} updates per run; ratio: median (range) of "
                   f"{args.repeats} runs", rows,
                   {"model.cnn.hidden_dim": "hidden", "MB": "mb", "raw broadcast ms": "raw_ms",
                    "update, applied ms": "update_ms", "update/raw": "ratio_text",
                    "learner send ms": "send_ms", "pause p50 ms": "pause_ms",
                    "pause max ms": "pause_max_ms", "batch of max_batch ms": "batch_ms",
                    "max pause/batch": "pause_vs_batch"}))
    print(markdown("Where an update's latency goes (medians over servers and updates, ms; "
                   "the four parts sum to one server's latency)", rows,
                   {"MB": "mb", "update, applied": "update_ms", "raw": "raw_ms",
                    "send -> header in (of it: state dict + flatten)": "header_text",
                    "header -> buffers in, handed over": "recv_ms",
                    "hand-over -> load starts": "handover_ms", "load": "apply_ms"}))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
