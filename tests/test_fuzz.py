"""10,000 random and mutated frames at every listening ZeroMQ socket of a running run (the
learner's rendezvous and trajectory sockets, the inference server), and random byte
streams at the weights store: no role crashes, every rejected message is counted, and
training continues to its end."""

import collections
import json
import random
import re
import socket
import time

import pytest
import zmq

from configs import load_config
from links import wiring
from protocol.codec import encode
from protocol.endpoint import LOG_BURST, LOG_WINDOW_S
from tests.conftest import ROOT, small_overrides, start_run, wait_for_text
from tests.messages_factory import every_message

pytestmark = pytest.mark.slow

FRAMES = 10_000


def _mutate(frames: list[bytes], rnd: random.Random) -> list[bytes]:
    """One mutation of an encoded message: flipped or cut bytes, dropped, repeated,
    swapped or extra frames, or a header replaced by junk."""
    frames = list(frames)
    kind = rnd.randrange(7)
    i = rnd.randrange(len(frames))
    if kind == 0 and frames[i]:  # flip bytes
        b = bytearray(frames[i])
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        frames[i] = bytes(b)
    elif kind == 1:  # cut a frame short
        frames[i] = frames[i][:rnd.randrange(len(frames[i]) + 1)]
    elif kind == 2 and len(frames) > 1:  # drop a frame
        del frames[i]
    elif kind == 3:  # repeat a frame
        frames.insert(i, frames[i])
    elif kind == 4 and len(frames) > 1:  # swap two frames
        j = rnd.randrange(len(frames))
        frames[i], frames[j] = frames[j], frames[i]
    elif kind == 5:  # an extra random frame
        frames.insert(i, rnd.randbytes(rnd.randint(0, 64)))
    else:  # the header replaced by random bytes
        frames[0] = rnd.randbytes(rnd.randint(0, 256))
    return frames


def _fuzz_frames(n: int, seed: int) -> list[list[bytes]]:
    """Half purely random multipart messages, half mutations of valid messages of every
    type. The valid ones are encoded for another run id (a stranger does not know this
    run's), so even a mutation that still decodes is refused."""
    rnd = random.Random(seed)
    valid = [[bytes(f) for f in encode(m, "stranger", "not-this-run", k)]
             for k, m in enumerate(every_message())]
    out = []
    for k in range(n):
        if k % 2:
            out.append([rnd.randbytes(rnd.randint(0, 512)) for _ in range(rnd.randint(1, 4))])
        else:
            out.append(_mutate(rnd.choice(valid), rnd))
    return out


def _fuzz_store(host: str, port: int, streams: int = 500) -> None:
    """Random byte streams at torch.distributed's weights store (not ZeroMQ: it counts
    nothing, but it must not take the learner down)."""
    rnd = random.Random(4)
    for _ in range(streams):
        with socket.create_connection((host, port), timeout=5) as conn:
            try:
                conn.sendall(rnd.randbytes(rnd.randint(0, 300)))
            except OSError:  # the store closed a connection it could not parse
                pass


def _send_all(address: str, messages: list[list[bytes]]) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.setsockopt(zmq.SNDTIMEO, 60_000)
    sock.connect(address)
    for frames in messages:
        sock.send_multipart(frames)
        while sock.poll(0):  # error replies: read and dropped, as a stranger would
            sock.recv_multipart()
    time.sleep(1.0)
    sock.close()
    ctx.term()


def test_fuzzed_sockets_reject_everything_and_training_continues(tmp_path):
    # Slow envs keep the learner ahead of the actors: a learner that is behind stops
    # reading (backpressure), which would throttle the fuzzer as it throttles actors.
    overrides = small_overrides(tmp_path, **{"run.total_updates": 40,
                                             "network.transport": "tcp",
                                             "env.synthetic.step_sleep_ms": 5})
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", overrides)
    run = start_run(tmp_path, overrides)
    try:
        wait_for_text(tmp_path / "run" / "learner-0.log", "learner ready", run, 60)
        learner_msgs = _fuzz_frames(FRAMES * 4 // 10, seed=1)
        server_msgs = _fuzz_frames(FRAMES * 4 // 10, seed=2)
        rendezvous_msgs = _fuzz_frames(FRAMES - len(learner_msgs) - len(server_msgs), seed=3)
        _send_all(wiring.learner_address(cfg, bind=False), learner_msgs)
        _send_all(wiring.inference_address(cfg, 0, bind=False), server_msgs)
        _send_all(wiring.rendezvous_address(cfg, bind=False), rendezvous_msgs)
        _fuzz_store(cfg.network.learner_host, cfg.network.base_port + 2)
        run.wait(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    out = (tmp_path / "output.txt").read_text()
    assert run.returncode == 0, out[-3000:]
    # The flood was logged rate-limited, not line by line (the counts below have every
    # rejection): each endpoint logs at most LOG_BURST lines per LOG_WINDOW_S, so any
    # aligned window of a role (2 endpoints at most) overlaps 2 of each endpoint's.
    lines = re.findall(r"^(\d\d):(\d\d):(\d\d) (\S+) .*rejected a message", out, re.M)
    assert 0 < len(lines) < FRAMES // 20
    per_window = collections.Counter(
        (role, (int(h) * 3600 + int(m) * 60 + int(s)) // int(LOG_WINDOW_S))
        for h, m, s, role in lines)
    assert max(per_window.values()) <= 2 * 2 * LOG_BURST, per_window.most_common(3)
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 40 and summary["duplicates"] == 0
    # Every fuzzed message was refused and counted, by reason.
    assert sum(summary["rejected_messages"].values()) == len(learner_msgs), \
        summary["rejected_messages"]
    assert sum(summary["rendezvous_rejected_messages"].values()) == len(rendezvous_msgs), \
        summary["rendezvous_rejected_messages"]
    server = json.loads((tmp_path / "run" / "inference-0.json").read_text())
    assert sum(server["rejected_by_code"].values()) == len(server_msgs), server
    assert server["policy_version"] == 40
