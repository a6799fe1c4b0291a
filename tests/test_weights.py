"""Weight broadcast over a real gloo process group, and the in-memory bus."""

import time

import pytest
import torch

from links.rendezvous import Registry
from links.weight_hub import WeightHub
from models import build_policy
from protocol.messages import Register
from links.weights import (
    DistWeightReceiver, InProcWeightBus, flatten, join_group, unflatten, flat_layout,
)

CPU = torch.device("cpu")


def _join(cfg, registry, server_model, incarnation=0):
    """Server 0 registers (incarnation ``incarnation``) and starts joining its group."""
    problem, generation, _ = registry.register(Register("inference", 0, incarnation, "x", -1))
    assert problem == "" and generation >= 1
    return DistWeightReceiver(server_model, CPU,
                              lambda layout: join_group(cfg, 0, generation, CPU, layout))


def _admit(hub, version, model, joined: int) -> None:
    """Admit until ``joined`` servers have joined (groups form on threads)."""
    for _ in range(600):
        hub.admit(version, model)
        if hub.joined >= joined:
            return
        time.sleep(0.05)
    raise AssertionError("the server did not join")


def _pair(cfg, server_model, learner_model):
    """The learner's hub (rank 0) and a server's receiver (rank 1) in a real gloo group
    of two, formed when the hub admits the registered server (it sends version 0)."""
    registry = Registry(cfg)
    hub = WeightHub(cfg, CPU, registry)
    receiver = _join(cfg, registry, server_model)
    _admit(hub, 0, learner_model, 1)
    return hub, registry, receiver


def _models(cfg):
    """The learner's policy and a server's, with different weights."""
    torch.manual_seed(1)
    learner_model = build_policy(cfg.model)
    torch.manual_seed(2)
    return learner_model, build_policy(cfg.model)


def test_flatten_round_trip(small_cfg):
    model = build_policy(small_cfg.model)
    state = model.state_dict()
    back = unflatten(flat_layout(state), flatten(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_gloo_broadcast_reaches_the_server_and_ends_with_shutdown(small_cfg):
    cfg = small_cfg  # ipc transport: the group meets in a FileStore under ipc_dir
    learner_model, server_model = _models(cfg)
    sender, _, receiver = _pair(cfg, server_model, learner_model)
    version, state = receiver.wait_first(30)
    server_model.load_state_dict(state)
    assert version == 0
    for a, b in zip(learner_model.state_dict().values(), server_model.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        for p in learner_model.parameters():
            p.add_(1.0)
    sender.send(7, learner_model)
    sender.close()
    assert receiver.finished.wait(30) and receiver.error is None
    version, state = receiver.poll()
    assert version == 7
    assert torch.equal(state["log_std"], learner_model.state_dict()["log_std"])


def test_a_restarted_server_joins_a_new_group_and_gets_the_current_weights(small_cfg):
    cfg = small_cfg
    torch.manual_seed(1)
    learner_model = build_policy(cfg.model)
    hub, registry, first = _pair(cfg, build_policy(cfg.model), learner_model)
    assert first.wait_first(30)[0] == 0 and hub.joined == 1
    hub.send(1, learner_model)
    assert first.finished.wait(0.2) is False  # still joined, waiting for more
    with torch.no_grad():
        learner_model.log_std.add_(0.5)
    # The server restarts: its new incarnation registers and joins generation 2; the hub
    # drops the old group and sends the newcomer the weights it has now (version 1).
    torch.manual_seed(2)
    restarted_model = build_policy(cfg.model)
    second = _join(cfg, registry, restarted_model, incarnation=1)
    _admit(hub, 1, learner_model, 2)
    version, state = second.wait_first(30)
    assert version == 1 and hub.joined == 2 and list(hub.links) == [0]
    assert torch.equal(state["log_std"], learner_model.state_dict()["log_std"])
    hub.close()
    assert second.finished.wait(30) and second.error is None


def test_inproc_bus_gives_late_receivers_the_last_weights(small_cfg):
    bus = InProcWeightBus()
    model = build_policy(small_cfg.model)
    bus.send(3, model)
    receiver = bus.receiver(build_policy(small_cfg.model), torch.device("cpu"))
    version, state = receiver.wait_first(1)
    assert version == 3 and torch.equal(state["log_std"], model.state_dict()["log_std"])
    with pytest.raises(RuntimeError, match="no initial weights"):
        InProcWeightBus().receiver(model, torch.device("cpu")).wait_first(0.1)


def test_updates_reuse_two_buffer_sets_and_never_touch_the_one_handed_out(small_cfg):
    """On CPU the receiver alternates two sets of buffers: the state the server holds
    stays intact while the next update arrives, and a third update allocates nothing."""
    import select

    model = build_policy(small_cfg.model)
    sender, _, receiver = _pair(small_cfg, build_policy(small_cfg.model), model)
    assert receiver.wait_first(30)[0] == 0
    receiver.clear_wake()

    def send_and_wait(version):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        sender.send(version, model)
        for _ in range(100):  # a wake-up may be a late one of the update before
            assert select.select([receiver.wake_fd], [], [], 30)[0], "no wake-up"
            receiver.clear_wake()
            got = receiver.poll()
            if got is not None:
                break
        sent = {k: v.clone() for k, v in model.state_dict().items()}
        return sent, got

    sent1, (v1, state1) = send_and_wait(1)
    sent2, (v2, state2) = send_and_wait(2)
    assert all(torch.equal(state1[k], sent1[k]) for k in sent1)  # not overwritten
    sent3, (v3, state3) = send_and_wait(3)
    assert all(torch.equal(state2[k], sent2[k]) for k in sent2)
    assert (v1, v2, v3) == (1, 2, 3) and receiver.poll() is None
    assert all(torch.equal(state3[k], sent3[k]) for k in sent3)
    ptr = {k: state1[k].data_ptr() for k in state1}
    assert all(state3[k].data_ptr() == ptr[k] for k in ptr)  # set 1 again
    assert all(state2[k].data_ptr() != ptr[k] for k in ptr if state2[k].numel())
    sender.close()
    assert receiver.finished.wait(30) and receiver.error is None


@pytest.mark.parametrize("keepalive", [True, False])
def test_a_long_wait_between_updates_keeps_the_link_with_keepalives(tmp_path, keepalive):
    """Minutes between updates (most GRPO groups filtered) must not time out the server's
    waiting receive: the learner keeps the idle link alive. Without the keepalives (the
    learner not admitting while it waits) the receive times out: the control."""
    from configs import load_config
    from tests.conftest import ROOT, small_overrides
    cfg = load_config(ROOT / "configs/synthetic_grpo.yaml",
                      small_overrides(tmp_path, **{"network.weights_timeout_s": 4}))
    torch.manual_seed(1)
    learner_model = build_policy(cfg.model)
    server_model = build_policy(cfg.model)
    hub, _, receiver = _pair(cfg, server_model, learner_model)
    assert receiver.wait_first(30)[0] == 0
    waited = time.monotonic()
    while time.monotonic() - waited < 3 * cfg.network.weights_timeout_s:
        if keepalive:
            hub.admit(0, learner_model)  # what the learner's loop does while it waits
        time.sleep(0.2)
    if not keepalive:
        assert receiver.finished.wait(30) and "Timed out" in str(receiver.error)
        return
    assert receiver.error is None and hub.keepalives >= 4
    hub.send(1, learner_model)
    hub.close()
    assert receiver.finished.wait(30) and receiver.error is None
    assert receiver.poll()[0] == 1


@pytest.mark.parametrize("requested,devices,expect", [
    ("auto", ("GPU-a", "GPU-b"), "nccl"),    # two GPUs: NCCL
    ("auto", ("GPU-a", "GPU-a"), "gloo"),    # one GPU for both: NCCL would refuse it
    ("auto", ("GPU-a", "cpu"), "gloo"),      # a CPU end
    ("nccl", ("GPU-a", "GPU-b"), "nccl"),
    ("gloo", ("GPU-a", "GPU-b"), "gloo"),
    ("nccl", ("GPU-a", "GPU-a"), "refused"),
    ("nccl", ("cpu", "GPU-b"), "refused"),
])
def test_both_ends_of_a_weights_group_agree_on_its_backend(small_cfg, monkeypatch, requested,
                                                           devices, expect):
    import dataclasses
    import threading

    import torch.distributed as dist

    from links import weights

    cfg = dataclasses.replace(small_cfg, network=dataclasses.replace(
        small_cfg.network, weights_backend=requested))
    # Each end's device identity, as its own process would read it (the UUID of its GPU).
    ident = {torch.device("cuda", 0): devices[0], torch.device("cuda", 1): devices[1]}
    monkeypatch.setattr(weights, "gpu_identity", lambda d: ident[d])
    store = dist.HashStore()
    got: dict = {}

    def end(rank):
        try:
            got[rank] = weights.group_backend(store, rank, cfg, torch.device("cuda", rank))
        except weights.SharedGPUError as exc:
            got[rank] = "refused"
            got[f"message{rank}"] = str(exc)

    threads = [threading.Thread(target=end, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert got[0] == got[1] == expect
    if expect == "refused":
        assert "network.weights_backend=auto" in got["message0"]


def test_non_finite_weights_are_never_sent(small_cfg):
    torch.manual_seed(0)
    model = build_policy(small_cfg.model)
    bus = InProcWeightBus()
    receiver = bus.receiver(model, CPU)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    bus.send(1, model)
    assert receiver.poll() is None  # nothing handed over
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = 0.0
    bus.send(2, model)
    assert receiver.poll()[0] == 2
