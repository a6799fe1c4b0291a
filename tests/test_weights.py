"""Weight broadcast over a real gloo process group, and the in-memory bus."""

import threading

import pytest
import torch

from models import build_policy
from protocol.weights import (
    DistWeightReceiver, DistWeightSender, InProcWeightBus, flatten, join_group, unflatten,
    flat_layout,
)


def _pair(cfg, server_model):
    """A sender (rank 0) and a receiver (rank 1) in a real gloo group of two."""
    groups = {}
    joiner = threading.Thread(target=lambda: groups.update(
        server=join_group(cfg, 1, torch.device("cpu"))))
    joiner.start()
    sender = DistWeightSender(join_group(cfg, 0, torch.device("cpu")), torch.device("cpu"))
    joiner.join(timeout=60)
    return sender, DistWeightReceiver(server_model, torch.device("cpu"), groups["server"])


def test_flatten_round_trip(small_cfg):
    model = build_policy(small_cfg.model)
    state = model.state_dict()
    back = unflatten(flat_layout(state), flatten(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_gloo_broadcast_reaches_the_server_and_ends_with_shutdown(small_cfg):
    cfg = small_cfg  # ipc transport: the group meets in a FileStore under ipc_dir
    torch.manual_seed(1)
    learner_model = build_policy(cfg.model)
    torch.manual_seed(2)
    server_model = build_policy(cfg.model)
    sender, receiver = _pair(cfg, server_model)
    sender.send(0, learner_model)
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
    sender, receiver = _pair(small_cfg, build_policy(small_cfg.model))

    def send_and_wait(version):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        sender.send(version, model)
        assert select.select([receiver.wake_fd], [], [], 30)[0], "no wake-up"
        receiver.clear_wake()
        return {k: v.clone() for k, v in model.state_dict().items()}

    sent1 = send_and_wait(1)
    v1, state1 = receiver.poll()
    sent2 = send_and_wait(2)
    assert all(torch.equal(state1[k], sent1[k]) for k in sent1)  # not overwritten
    v2, state2 = receiver.poll()
    sent3 = send_and_wait(3)
    assert all(torch.equal(state2[k], sent2[k]) for k in sent2)
    v3, state3 = receiver.poll()
    assert (v1, v2, v3) == (1, 2, 3) and receiver.poll() is None
    assert all(torch.equal(state3[k], sent3[k]) for k in sent3)
    ptr = {k: state1[k].data_ptr() for k in state1}
    assert all(state3[k].data_ptr() == ptr[k] for k in ptr)  # set 1 again
    assert all(state2[k].data_ptr() != ptr[k] for k in ptr if state2[k].numel())
    sender.close()
    assert receiver.finished.wait(30) and receiver.error is None
