"""The rendezvous' books (who is live, which incarnations are dead), the client's bounded
wait for a learner, and the discarding of a dead incarnation's unfinished groups."""

import dataclasses
import threading
import time

import pytest
import zmq

from learner.receiver import GroupAssembler
from links.rendezvous import Registry, Rendezvous
from protocol import ids
from protocol.messages import Heartbeat, Register
from links.registration import LearnerGone, Registration
from tests.messages_factory import trajectory


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _id(actor, incarnation, n=0):
    return ids.encode(incarnation, actor, n)


def test_a_newer_incarnation_retires_the_older_and_its_episodes(small_cfg):
    reg = Registry(small_cfg, Clock())
    assert reg.register(Register("actor", 0, 0, "", -1)) == ("", -1, -1)
    assert reg.actor_status(_id(0, 0, 5)) == "live"
    assert reg.actor_status(_id(1, 0)) == "unknown"  # actor 1 has not registered
    assert reg.register(Register("actor", 0, 1, "", -1)) == ("", -1, 0)  # replaced 0
    assert reg.restarts == 1
    assert reg.actor_status(_id(0, 0, 6)) == "retired"
    assert reg.actor_status(_id(0, 1)) == "live"
    assert reg.heartbeat(Heartbeat("actor", 0, 0)) == "retired"
    assert reg.register(Register("actor", 0, 0, "", -1))[0] == "retired"  # cannot return
    assert reg.heartbeat(Heartbeat("actor", 0, 1)) == ""
    assert reg.heartbeat(Heartbeat("actor", 1, 0)) == "not_registered"


def test_a_repeated_server_register_gets_the_same_group_unless_it_lost_it(small_cfg):
    reg = Registry(small_cfg, Clock())
    _, g1, _ = reg.register(Register("inference", 0, 0, "tcp://a:1", -1))
    assert reg.register(Register("inference", 0, 0, "tcp://a:1", -1)) == ("", g1, -2)
    assert reg.joins.qsize() == 1
    _, g2, replaced = reg.register(Register("inference", 0, 0, "tcp://a:1", g1))
    assert g2 > g1 and replaced == -1 and reg.joins.qsize() == 2
    first, second = reg.joins.get(), reg.joins.get()
    assert not reg.current(first) and reg.current(second)  # the old join is skipped
    roster = reg.roster()
    assert roster.inference_addresses[0] == "tcp://a:1"
    assert list(roster.inference_incarnations) == [0]


def test_silence_past_the_heartbeat_timeout_is_death(small_cfg):
    clock = Clock()
    reg = Registry(small_cfg, clock)
    reg.register(Register("actor", 1, 0, "", -1))
    reg.register(Register("inference", 0, 0, "tcp://a:1", -1))
    clock.t += small_cfg.network.heartbeat_timeout_s / 2
    reg.heartbeat(Heartbeat("actor", 1, 0))
    assert reg.expire() == []
    clock.t += small_cfg.network.heartbeat_timeout_s * 0.75
    assert reg.expire() == [("inference", 0, 0)]  # the actor's heartbeat kept it alive
    clock.t += small_cfg.network.heartbeat_timeout_s
    assert reg.expire() == [("actor", 1, 0)]
    assert reg.actor_status(_id(1, 0)) == "retired" and reg.live_actors() == set()
    assert reg.heartbeat(Heartbeat("actor", 1, 0)) == "retired"


def test_a_process_without_a_learner_gives_up_after_learner_wait_s(small_cfg):
    cfg = dataclasses.replace(small_cfg, network=dataclasses.replace(
        small_cfg.network, learner_wait_s=0.5, heartbeat_s=0.1, heartbeat_timeout_s=1.0))
    ctx = zmq.Context()
    client = Registration(ctx, cfg, "actor", 0)
    with pytest.raises(LearnerGone, match=r"rendezvous\.sock for 0 s \(network\.learner_wait_s\)"):
        client.wait(threading.Event())
    client.close()
    ctx.term()


def test_the_client_registers_again_when_the_learner_forgot_it(small_cfg):
    cfg = dataclasses.replace(small_cfg, network=dataclasses.replace(
        small_cfg.network, heartbeat_s=0.05, heartbeat_timeout_s=1.0))
    ctx = zmq.Context()
    registry = Registry(cfg)
    rendezvous = Rendezvous(cfg, ctx, registry)
    rendezvous.start()
    client = Registration(ctx, cfg, "actor", 1)
    try:
        client.wait(threading.Event())
        assert client.registrations == 1 and registry.live_actors() == {1}
        with registry.lock:  # the learner restarted: it knows nobody
            registry.members["actor"].clear()
        for _ in range(100):
            client.poll()
            if client.registrations == 2:
                break
            time.sleep(0.02)
        assert client.registrations == 2 and registry.live_actors() == {1}
    finally:
        rendezvous.halt.set()
        rendezvous.join(5)
        client.close()
        ctx.term()


def test_discard_drops_only_the_dead_incarnations_partial_groups():
    asm = GroupAssembler()
    dead = dataclasses.replace(trajectory(), episode_id=_id(0, 3, 1), group_id=_id(0, 3, 7))
    other = dataclasses.replace(trajectory(), episode_id=_id(0, 4, 1), group_id=_id(0, 4, 7))
    assert asm.add(dead) is None and asm.add(other) is None
    assert asm.discard(0, 3) == [dead.episode_id]
    assert list(asm.partial) == [other.group_id]
