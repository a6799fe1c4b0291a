"""Observation throughput of chunkrl's protocol layer vs raw zero-copy ZeroMQ frames.

What it measures
    How many observation rows per second (and GB/s) go from one process to another
    as ``ObsRequest`` batches -- by default main_images uint8 [64,224,224,3], states
    float32 [64,8] and 64 task descriptions, about 9.6 MB a message -- two ways, in
    the same run and over the same socket pattern (DEALER -> ROUTER, the actor ->
    inference-server link), for each transport (ipc, tcp):

    raw       the sender sends multipart [small header, images buffer, states buffer]
              with ``copy=False``; the receiver does ``recv_multipart(copy=False)``
              and ``np.frombuffer`` on the frames. The floor of what any wire format
              built on ZeroMQ frames can cost.
    protocol  the sender builds each message with ``protocol.codec.encode`` and sends
              its frames with ``copy=False``; the receiver does
              ``recv_multipart(copy=False)`` + ``protocol.codec.decode`` (the full
              validation a server does on every request).

    Sender and receiver are separate processes (multiprocessing, spawn) so they do not
    share a GIL. The sender sends ``--warmup`` messages, then times ``--messages``
    messages (or as many as fit in ``--seconds``, the default), then a stop frame; the
    receiver times from the end of the warm-up to the last message. SNDHWM/RCVHWM are
    set to ``--hwm`` (8) so at most a few hundred MB are in flight. ipc sockets live in
    a temporary folder; tcp uses 127.0.0.1 on a free port. Each case is run
    ``--repeats`` times, raw and protocol interleaved, and the best run is reported.

    It prints a Markdown table: obs/s (rows per second), GB/s (all frames, 1e9 bytes)
    and the ratio protocol/raw per transport. With ``--check`` it exits 1 when a ratio
    is below ``--min-ratio`` (0.9).

How to run
    make bench                                    # = python benchmarks/bench_transport.py
    python benchmarks/bench_transport.py --transports ipc --seconds 5 --repeats 3 --check
    python benchmarks/bench_transport.py --messages 5 --warmup 1    # a quick smoke run
Figures go to benchmarks/RESULTS.md by hand, with the command that produced them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import struct
import sys
import tempfile
import time

import numpy as np
import zmq

STOP = b"\x00STOP"  # never a msgpack map, so never mistaken for a protocol header
RAW_HEADER = struct.Struct("<5I")  # B, H, W, S, length of the joined task descriptions
RUN_ID = "bench"
POLL_MS = 30_000  # a receiver that hears nothing for this long gives up


def make_batch(batch: int, size: int, state_dim: int, seed: int = 0):
    """The workload: one ObsRequest's worth of arrays and strings."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    states = rng.standard_normal((batch, state_dim), dtype=np.float32)
    tasks = [f"put the red block in the bowl ({i})" for i in range(batch)]
    return images, states, tasks


def _socket(ctx: zmq.Context, kind: int, hwm: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 5000)
    return sock


# --- the two processes --------------------------------------------------------------

def receiver_main(mode: str, bind: str, hwm: int, warmup: int, out: "mp.Queue") -> None:
    """Bind a ROUTER, report the address, receive until STOP, report the timing."""
    from protocol.codec import decode
    from protocol.messages import ObsRequest

    ctx = zmq.Context()
    sock = _socket(ctx, zmq.ROUTER, hwm)
    try:
        if bind.startswith("tcp://"):
            port = sock.bind_to_random_port(bind)
            address = f"{bind}:{port}"
        else:
            sock.bind(bind)
            address = bind
        out.put(("address", address))
        received = timed_bytes = rows = 0
        start = end = None
        while True:
            if not sock.poll(POLL_MS, zmq.POLLIN):
                raise RuntimeError(f"{mode} receiver: nothing received for {POLL_MS} ms")
            frames = sock.recv_multipart(copy=False)[1:]  # drop the identity frame
            if len(frames) == 1 and frames[0].bytes == STOP:
                break
            if mode == "raw":
                b, h, w, s, n = RAW_HEADER.unpack_from(frames[0].buffer)
                images = np.frombuffer(frames[1], dtype=np.uint8).reshape(b, h, w, 3)
                states = np.frombuffer(frames[2], dtype="<f4").reshape(b, s)
                tasks = bytes(frames[0].buffer[RAW_HEADER.size:RAW_HEADER.size + n])
                got_rows = images.shape[0]
                assert states.shape[0] == got_rows and tasks
            else:
                _, msg = decode(frames, expected=(ObsRequest,))
                got_rows = msg.main_images.shape[0]
            received += 1
            if received == warmup:
                start = time.perf_counter()
            elif received > warmup:
                end = time.perf_counter()
                rows += got_rows
                timed_bytes += sum(len(f) for f in frames)
        timed = received - warmup
        if timed < 1 or start is None or end is None:
            raise RuntimeError(f"{mode} receiver: only {received} messages for a warm-up "
                               f"of {warmup}; nothing timed")
        out.put(("result", {"messages": timed, "rows": rows, "bytes": timed_bytes,
                            "seconds": end - start}))
    except BaseException as exc:  # reported to the parent, which fails loudly
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        sock.close(0)
        ctx.term()


def sender_main(mode: str, address: str, hwm: int, warmup: int, messages: int,
                seconds: float, batch: int, size: int, state_dim: int) -> None:
    """Connect a DEALER and send warm-up + timed messages, then STOP."""
    from protocol.codec import encode
    from protocol.messages import ObsRequest

    images, states, tasks = make_batch(batch, size, state_dim)
    joined = "\n".join(tasks).encode()
    raw_header = RAW_HEADER.pack(batch, size, size, state_dim, len(joined)) + joined
    ctx = zmq.Context()
    sock = _socket(ctx, zmq.DEALER, hwm)
    sock.connect(address)
    seq = 0

    def send_one() -> None:
        nonlocal seq
        seq += 1
        if mode == "raw":
            sock.send_multipart([raw_header, images, states], copy=False)
        else:
            msg = ObsRequest(seq, False, tasks, images, states)
            sock.send_multipart(encode(msg, "bench-sender", RUN_ID, seq), copy=False)

    try:
        for _ in range(warmup):
            send_one()
        start = time.perf_counter()
        sent = 0
        while (sent < messages) if messages else (time.perf_counter() - start < seconds):
            send_one()
            sent += 1
        sock.send(STOP)
    finally:
        sock.close()  # LINGER lets the queued messages drain before the context ends
        ctx.term()


# --- orchestration -----------------------------------------------------------------

def run_case(transport: str, mode: str, args, tmp: str) -> dict:
    """One sender -> receiver run; returns the receiver's timing."""
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    bind = f"ipc://{tmp}/{mode}.sock" if transport == "ipc" else "tcp://127.0.0.1"
    recv = spawn.Process(target=receiver_main, args=(mode, bind, args.hwm, args.warmup, out))
    recv.start()
    send = None
    try:
        kind, value = out.get(timeout=60)
        if kind != "address":
            raise RuntimeError(f"{transport}/{mode} receiver failed: {value}")
        send = spawn.Process(target=sender_main, args=(
            mode, value, args.hwm, args.warmup, args.messages, args.seconds, args.batch,
            args.image_size, args.state_dim))
        send.start()
        kind, value = out.get(timeout=args.seconds + 120 if not args.messages else 600)
        if kind != "result":
            raise RuntimeError(f"{transport}/{mode} receiver failed: {value}")
        send.join(60)
        recv.join(60)
        if send.exitcode != 0:
            raise RuntimeError(f"{transport}/{mode} sender exited with {send.exitcode}")
        return value
    finally:
        for proc in (send, recv):
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=0,
                   help="timed messages per case (default: as many as fit in --seconds)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="sending time per case when --messages is not given (default 3)")
    p.add_argument("--warmup", type=int, default=10, help="untimed messages first (10)")
    p.add_argument("--batch", type=int, default=64, help="B: rows per message (64)")
    p.add_argument("--image-size", type=int, default=224, help="H = W of images (224)")
    p.add_argument("--state-dim", type=int, default=8, help="S: state dimension (8)")
    p.add_argument("--transports", nargs="+", default=["ipc", "tcp"],
                   help="ipc and/or tcp (space- or comma-separated; default both)")
    p.add_argument("--hwm", type=int, default=8, help="SNDHWM/RCVHWM of both sockets (8)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per case, raw and protocol interleaved; the best is kept (1)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a protocol/raw ratio is below --min-ratio")
    p.add_argument("--min-ratio", type=float, default=0.9, help="for --check (0.9)")
    args = p.parse_args(argv)
    args.transports = [t for item in args.transports for t in item.split(",") if t]
    bad = [t for t in args.transports if t not in ("ipc", "tcp")]
    if bad or not args.transports:
        p.error(f"--transports takes ipc and/or tcp, got {args.transports}")
    if args.messages < 0 or args.warmup < 1 or args.batch < 1 or args.image_size < 1 \
            or args.state_dim < 1 or args.hwm < 1 or args.repeats < 1 or args.seconds <= 0:
        p.error("--messages >= 0; --warmup, --batch, --image-size, --state-dim, --hwm, "
                "--repeats >= 1; --seconds > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    msg_bytes = args.batch * (args.image_size ** 2 * 3 + args.state_dim * 4)
    print(f"# chunkrl transport benchmark: ObsRequest B={args.batch}, "
          f"main_images uint8 [{args.batch},{args.image_size},{args.image_size},3], "
          f"states float32 [{args.batch},{args.state_dim}], {args.batch} task strings "
          f"({msg_bytes / 1e6:.2f} MB of arrays a message)")
    print(f"# {'%d messages' % args.messages if args.messages else '%.1f s' % args.seconds}"
          f" per case after {args.warmup} warm-up, best of {args.repeats}; hwm={args.hwm}; "
          f"python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq "
          f"{zmq.zmq_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print()
    tmp = tempfile.mkdtemp(prefix="chunkrl-bench-")
    rows, ratios = [], {}
    try:
        for transport in args.transports:
            best: dict = {}
            for _ in range(args.repeats):
                for mode in ("raw", "protocol"):
                    r = run_case(transport, mode, args, tmp)
                    r["obs_s"] = r["rows"] / r["seconds"]
                    r["gb_s"] = r["bytes"] / r["seconds"] / 1e9
                    if mode not in best or r["obs_s"] > best[mode]["obs_s"]:
                        best[mode] = r
            ratios[transport] = best["protocol"]["obs_s"] / best["raw"]["obs_s"]
            for mode in ("raw", "protocol"):
                r = best[mode]
                ratio = f"{ratios[transport]:.3f}" if mode == "protocol" else ""
                rows.append(f"| {transport} | {mode} | {r['messages']} | {r['seconds']:.3f} "
                            f"| {r['obs_s']:,.0f} | {r['gb_s']:.3f} | {ratio} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| transport | path | messages | seconds | obs/s | GB/s | protocol/raw |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.check:
        low = {t: r for t, r in ratios.items() if r < args.min_ratio}
        if low:
            print(f"\nFAIL: protocol/raw below {args.min_ratio}: "
                  + ", ".join(f"{t} {r:.3f}" for t, r in low.items()), file=sys.stderr)
            return 1
        print(f"\nOK: every protocol/raw ratio >= {args.min_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
