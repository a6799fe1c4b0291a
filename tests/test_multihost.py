"""Roles on separate hosts: the learner, an inference server and two actors, each in its
own network namespace with its own address on a bridge, each started by its own
``launch.py --role`` over TCP, train for a few updates with the weights broadcast across
namespaces. Skips, saying why, where namespaces cannot be made (no root, no iproute2)."""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, small_overrides

pytestmark = pytest.mark.slow
HOSTS = ("learner-0", "inference-0", "actor-0", "actor-1")


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Hosts:
    """Four namespaces on one bridge, 10.231.X.1-4/24."""

    def __init__(self):
        tag = uuid.uuid4().hex[:5]
        self.bridge = f"ckbr{tag}"
        self.names = {h: f"ck{tag}{h[0]}{h[-1]}" for h in HOSTS}
        subnet = int(tag[:2], 16) % 200 + 20
        self.addresses = {h: f"10.231.{subnet}.{n + 1}" for n, h in enumerate(HOSTS)}
        self.made: list = []

    def make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        _ip("link", "set", self.bridge, "up")
        for n, host in enumerate(HOSTS):
            ns, veth = self.names[host], f"ckv{self.bridge[4:]}{n}"
            _ip("netns", "add", ns)
            self.made.append(("netns", ns))
            _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "p")
            _ip("link", "set", veth + "p", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", veth + "p")
            _ip("-n", ns, "link", "set", veth + "p", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)


@pytest.fixture
def hosts():
    if shutil.which("ip") is None:
        pytest.skip("no `ip` (iproute2) on this machine: cannot make network namespaces")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    h = Hosts()
    try:
        h.make()
    except subprocess.CalledProcessError as exc:
        h.remove()
        pytest.skip(f"cannot make network namespaces here: {exc.stderr.strip()}")
    yield h
    h.remove()


def test_four_hosts_train_with_weights_broadcast_across_them(tmp_path, hosts):
    learner_ip = hosts.addresses["learner-0"]
    common = small_overrides(tmp_path, **{
        "run.total_updates": 5, "network.transport": "tcp", "network.learner_host": learner_ip,
        "learner.sync_every": 1})
    procs = {}
    for host in HOSTS:
        role, index = host.rsplit("-", 1)
        cmd = ["ip", "netns", "exec", hosts.names[host], sys.executable, str(ROOT / "launch.py"),
               "--config", str(ROOT / "configs/synthetic_grpo.yaml"), *common,
               f"network.bind_host={hosts.addresses[host]}", "--role", role, "--index", index]
        procs[host] = subprocess.Popen(cmd, stdout=open(tmp_path / f"{host}.out", "w"),
                                       stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        codes = {host: p.wait(timeout=240) for host, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    outputs = {h: (tmp_path / f"{h}.out").read_text() for h in HOSTS}
    assert codes == dict.fromkeys(HOSTS, 0), {h: outputs[h][-1500:] for h in HOSTS}
    run = tmp_path / "run"
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] == 5 and summary["trained_twice"] == 0
    assert sorted(summary["actors_done"]) == ["0", "1"]
    server = json.loads((run / "inference-0.json").read_text())
    assert server["policy_version"] == 5 and server["requests"] > 0  # weights crossed over
    learner_log = (run / "learner-0.log").read_text()
    # The server registered with its own address, and the actors learnt it from the
    # rendezvous (they were configured with the learner's address only).
    server_address = f"tcp://{hosts.addresses['inference-0']}:"
    assert server_address in learner_log
    delivered = 0
    for k in (0, 1):
        assert server_address in (run / f"actor-{k}.log").read_text()
        actor = json.loads((run / f"actor-{k}.json").read_text())
        assert actor["env_steps"] > 0 and actor["unacknowledged"] == []  # it acted
        delivered += actor["episodes_delivered"]
    assert delivered == summary["episodes_received"] > 0
