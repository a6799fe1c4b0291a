"""A real inference server over real sockets: batching, routing, and surviving bad input."""

import json
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq

from configs import load_config
from envs import observation_fields
from envs.base import EnvObs
from inference_server.server import run as run_server
from links.rendezvous import Registry, Rendezvous
from models import build_policy
from links import wiring
from protocol.codec import decode, encode
from protocol.messages import ActionReply, ErrorReply, ObsRequest
from links.weights import InProcWeightBus
from tests.conftest import ROOT, small_overrides
from tests.messages_factory import obs_request


class ServerThread:
    """Inference server 0 of ``cfg`` on a thread, with version-0 weights handed over; it
    registers at a real rendezvous (the learner's, without the learner)."""

    def __init__(self, cfg):
        self.cfg, self.ctx, self.stop = cfg, zmq.Context(), threading.Event()
        self.rendezvous = Rendezvous(cfg, self.ctx, Registry(cfg))
        self.rendezvous.start()
        torch.manual_seed(cfg.run.seed)
        self.policy = build_policy(cfg.model).eval()
        self.bus = InProcWeightBus()
        self.bus.send(0, self.policy)
        self.thread = threading.Thread(target=run_server, args=(cfg, 0, self.ctx),
                                       kwargs=dict(weights_bus=self.bus, stop=self.stop))
        self.thread.start()

    def client(self) -> zmq.Socket:
        """An actor's DEALER to the server (each its own connection and identity)."""
        return wiring.connect_dealer(self.ctx, self.cfg,
                                     wiring.inference_address(self.cfg, 0, False))

    def close(self) -> dict:
        self.bus.close()  # the learner has finished: the server stops serving
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        self.rendezvous.halt.set()
        self.rendezvous.join(timeout=5)
        stats = json.loads((Path(self.cfg.run.log_dir) / "inference-0.json").read_text())
        self.ctx.destroy(linger=0)
        return stats


def _request(k: int, rows: int, request_id: int, size=32) -> ObsRequest:
    rng = np.random.default_rng(k)
    return ObsRequest(request_id, True, [f"move to the {c} square" for c in
                                         ["red", "green", "blue", "yellow"][:rows]],
                      rng.integers(0, 255, (rows, size, size, 3), dtype=np.uint8),
                      rng.standard_normal((rows, 8)).astype(np.float32))


def _recv(sock, timeout_ms=20000):
    assert sock.poll(timeout_ms), "no reply from the inference server"
    return decode(sock.recv_multipart(copy=False))[1]


def test_requests_of_several_actors_share_one_forward_and_replies_are_routed(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(
        tmp_path, **{"inference.max_wait_ms": 2000, "inference.max_batch": 12}))
    server = ServerThread(cfg)
    try:
        clients = [server.client() for _ in range(3)]
        requests = [_request(k, 4, 100 + k) for k in range(3)]
        for sock, req in zip(clients, requests):
            sock.send_multipart(encode(req, "test", cfg.run.run_id, 1), copy=False)
        replies = [_recv(sock) for sock in clients]
    finally:
        stats = server.close()
    assert stats["forward_passes"] == 1 and stats["max_requests_per_pass"] == 3
    for req, reply in zip(requests, replies):
        assert isinstance(reply, ActionReply) and reply.request_id == req.request_id
        assert reply.actions.shape == (4, 8, 7) and reply.policy_version == 0
        obs = EnvObs(req.main_images, req.states, req.task_descriptions)
        own = server.policy.act(server.policy.prepare(obs, torch.device("cpu")), True, 1.0)
        np.testing.assert_allclose(reply.actions, own.actions.numpy(), atol=1e-5)
        np.testing.assert_allclose(reply.logprobs, own.logprobs.numpy(), atol=1e-5)


def test_bad_messages_get_error_replies_and_the_server_keeps_serving(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml",
                      small_overrides(tmp_path, **{"network.max_message_mb": 1}))
    server = ServerThread(cfg)
    try:
        sock = server.client()
        good = encode(_request(0, 2, 5), "t", cfg.run.run_id, 1)
        header = msgpack.unpackb(good[0], raw=False)
        bad_inputs = {
            "bad_header": [b"not msgpack \xc1"],
            "truncated": good[:-1],
            "unknown_type": [msgpack.packb(dict(header, type="Evil")), *good[1:]],
            "bad_version": [msgpack.packb(dict(header, schema=99)), *good[1:]],
            "wrong_run": encode(_request(0, 2, 6), "t", "another-run", 1),
            "unexpected_type": encode(ActionReply(1, 0, np.zeros((1, 2, 2), np.float32),
                                                  np.zeros((1, 2, 2), np.float32)), "t",
                                      cfg.run.run_id, 1),
            "bad_request": encode(ObsRequest(8, True, ["x"], np.zeros((1, 32, 32, 3), np.uint8),
                                             np.zeros((1, 3), np.float32)), "t",
                                  cfg.run.run_id, 1),
            # each frame under the limit, the message over it: the codec rejects it
            "too_large": encode(obs_request(b=300, size=32, extra=False), "t", cfg.run.run_id, 1),
        }
        for code, frames in bad_inputs.items():
            sock.send_multipart(frames, copy=False)
            reply = _recv(sock)
            assert isinstance(reply, ErrorReply) and reply.code == code, (code, reply)
        # Larger than the size limit: libzmq drops it (MAXMSGSIZE), the server lives on.
        big = server.client()
        huge = obs_request(b=1, size=16)
        big.send_multipart([*encode(huge, "t", cfg.run.run_id, 1)[:-1],
                            b"\0" * ((cfg.network.max_message_mb << 20) + 1)])
        sock.send_multipart(good, copy=False)
        reply = _recv(sock)
        assert isinstance(reply, ActionReply) and reply.request_id == 5
    finally:
        stats = server.close()
    assert stats["rejected"] == len(bad_inputs)
    assert stats["requests"] == 1


@pytest.fixture
def small_cfg_tcp(tmp_path):
    return load_config(ROOT / "configs/synthetic_grpo.yaml",
                       small_overrides(tmp_path, **{"network.transport": "tcp"}))


def test_serves_over_tcp(small_cfg_tcp):
    server = ServerThread(small_cfg_tcp)
    try:
        sock = server.client()
        sock.send_multipart(encode(_request(1, 3, 9), "t", small_cfg_tcp.run.run_id, 1))
        reply = _recv(sock)
    finally:
        server.close()
    assert isinstance(reply, ActionReply) and reply.actions.shape == (3, 8, 7)


def test_non_finite_outputs_are_answered_with_policy_error_not_served():
    """A forward pass that gives NaN (broken weights, a bf16 overflow) is never served."""
    from configs import ModelConfig
    from inference_server.batcher import Pending
    from inference_server.core import InferenceCore
    from tests.messages_factory import obs_request

    torch.manual_seed(0)
    policy = build_policy(ModelConfig()).eval()
    core = InferenceCore(policy, torch.device("cpu"), 1.0, 8)
    req = obs_request(b=2, size=32, wrist=False, extra=False)
    assert isinstance(core.answer([Pending(b"a", req)])[0][1], ActionReply)
    with torch.no_grad():
        next(p for p in policy.parameters() if p.ndim > 1).fill_(float("nan"))
    (peer, reply), = core.answer([Pending(b"a", req)])
    assert isinstance(reply, ErrorReply) and reply.code == "policy_error"
    assert "non-finite" in reply.message and reply.request_id == req.request_id


def test_the_served_version_never_goes_back(tmp_path):
    """A learner resumed from an older checkpoint sends older weights: the server keeps
    serving its own until the learner is ahead."""
    from inference_server.core import InferenceCore
    from inference_server.server import InferenceServer

    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", small_overrides(tmp_path))
    torch.manual_seed(0)
    policy = build_policy(cfg.model).eval()
    server = InferenceServer(cfg, InferenceCore(policy, torch.device("cpu"), 1.0, 8), None)
    weights = {k: v.clone() for k, v in policy.state_dict().items()}
    older = {k: torch.zeros_like(v) for k, v in weights.items()}
    server._apply(12, weights)
    server._apply(9, older)  # the resumed learner's checkpoint
    assert server.core.version == 12 and server.older_updates_kept == 1
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in weights.items())
    server._apply(13, older)  # the learner is ahead again
    assert server.core.version == 13 and not server.behind_logged
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in older.items())


def test_bf16_serving_halves_the_sent_bytes_and_stays_near_fp32(small_cfg):
    from inference_server.core import InferenceCore, cast_parameters
    from links.weights import state_bytes, synced_state

    torch.manual_seed(0)
    learner = build_policy(small_cfg.model).eval()
    server = build_policy(small_cfg.model).eval()
    cast_parameters(server, torch.bfloat16)
    sent = synced_state(learner, torch.bfloat16)
    assert {str(v.dtype) for k, v in sent.items() if "log_std" in k} == {"torch.bfloat16"}
    assert state_bytes(sent) < 0.55 * state_bytes(learner.state_dict())
    bf16 = InferenceCore(server, torch.device("cpu"), 1.0, 8, torch.bfloat16)
    bf16.load(1, sent)
    fp32 = InferenceCore(learner, torch.device("cpu"), 1.0, 8)
    obs = observation_fields.from_requests([_request(0, 4, 1)])
    a16, lp16, _ = bf16.infer(obs, True)
    a32, lp32, _ = fp32.infer(obs, True)
    assert np.isfinite(lp16).all()
    # bf16 keeps 8 bits of mantissa: actions within a few hundredths, not equal
    assert 0 < np.abs(a16 - a32).max() < 0.05


def test_a_bf16_server_in_a_run_serves_and_the_learner_reports_the_drift(tmp_path):
    from tests.conftest import launch

    proc = launch(tmp_path, "configs/synthetic_grpo.yaml", **{
        "inference.dtype": "bf16", "run.total_updates": 2})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    learner_log = (tmp_path / "run" / "learner-0.log").read_text()
    assert "sent in inference.dtype=bf16" in learner_log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    events.Reload()
    drift = [e.value for e in events.Scalars("train/actor/logprob_drift")]
    # fp32 serving drifts by < 1e-5 (tests/test_learner.py); bf16 by its precision
    assert drift and all(d > 1e-3 for d in drift)
