"""CURVE on every link: the run trains; a stranger, with no key or a key of its own, gets
no reply on any socket, and is logged and counted."""

import json
import subprocess
import sys

import pytest
import zmq
import zmq.auth

from configs import load_config
from links import wiring
from protocol.codec import encode
from protocol.messages import Register
from tests.conftest import ROOT, small_overrides, start_run, wait_for_text
from tests.messages_factory import obs_request

pytestmark = pytest.mark.slow


def _keys(folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "keys", str(folder)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_keys_command_makes_pairs_and_never_overwrites(tmp_path):
    made = _keys(tmp_path / "keys")
    assert made.returncode == 0, made.stderr
    for name in ("server.key", "server.key_secret", "client.key_secret",
                 "authorized/client.key"):
        assert (tmp_path / "keys" / name).exists(), name
    again = _keys(tmp_path / "keys")
    assert again.returncode == 2 and "already holds keys" in again.stderr


def _stranger(ctx, address: str, frames: list, curve_keys=None) -> zmq.Socket:
    """A DEALER that connects to ``address`` and sends ``frames``, without the run's client
    key: with no CURVE at all, or (``curve_keys``) a key pair of its own."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_keys is not None:  # its own key pair, and the server's public key (known)
        server_public, public, secret = curve_keys
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
            server_public, public, secret
    sock.connect(address)
    sock.send_multipart(frames)
    return sock


def test_with_curve_a_client_without_the_key_gets_nothing_and_the_run_is_unaffected(tmp_path):
    assert _keys(tmp_path / "keys").returncode == 0
    overrides = small_overrides(tmp_path, **{
        "run.total_updates": 10, "network.transport": "tcp", "env.synthetic.step_sleep_ms": 50,
        "network.curve_dir": str(tmp_path / "keys")})
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml", overrides)
    run = start_run(tmp_path, overrides)
    ctx = zmq.Context()
    try:
        wait_for_text(tmp_path / "run" / "inference-0.log", "serving on", run, 90)
        register = encode(Register("inference", 0, 9, "tcp://127.0.0.1:1", -1), "stranger",
                          cfg.run.run_id, 1)
        request = encode(obs_request(b=1, size=32, wrist=False, extra=False), "stranger",
                         cfg.run.run_id, 1)
        server_public, _ = zmq.auth.load_certificate(str(tmp_path / "keys" / "server.key"))
        own_public, own_secret = zmq.curve_keypair()
        targets = [(wiring.rendezvous_address(cfg, bind=False), register),
                   (wiring.learner_address(cfg, bind=False), register),
                   (wiring.inference_address(cfg, 0, bind=False), request)]
        strangers = [(address, _stranger(ctx, address, [bytes(f) for f in frames], keys))
                     for address, frames in targets
                     for keys in (None, (server_public, own_public, own_secret))]
        for address, sock in strangers:
            assert not sock.poll(2000), address
        # Each refusal is logged when the handshake reaches it (on a loaded machine, after
        # the 2 s above): the strangers stay connected until both kinds are in both logs.
        for role in ("learner-0", "inference-0"):
            for text in ("refused a CURVE connection from an unauthorised key",
                         "CURVE handshake failed"):
                wait_for_text(tmp_path / "run" / f"{role}.log", text, run, 60)
        assert run.poll() is None, "the run ended before the strangers were done"
        for _, sock in strangers:
            sock.close(0)
        run.wait(timeout=180)
    finally:
        ctx.destroy(linger=0)
        if run.poll() is None:
            run.kill()
    out = (tmp_path / "output.txt").read_text()
    assert run.returncode == 0, out[-3000:]
    assert "refused a CURVE connection from an unauthorised key" in out
    assert "CURVE handshake failed" in out
    summary = json.loads((tmp_path / "run" / "learner_summary.json").read_text())
    assert summary["updates"] == 10 and summary["trained_twice"] == 0
    assert summary["curve_refused_connections"] >= 4  # two strangers at two sockets
    assert not summary["rejected_messages"] and not summary["rendezvous_rejected_messages"]
    server = json.loads((tmp_path / "run" / "inference-0.json").read_text())
    assert server["policy_version"] == 10 and server["curve_refused_connections"] >= 2
    assert server["rejected"] == 0  # nothing of the strangers' reached the server's code
