"""Acknowledged delivery: the outbox, and the learner's receiver over real sockets."""

import queue
import time

import pytest
import zmq

from actors.outbox import Outbox
from learner.receiver import GroupAssembler, TrajectoryReceiver
from protocol.idset import IdSet
from links import wiring
from protocol.codec import decode, encode
from protocol.messages import (
    ActorDone, ActorHello, ErrorReply, StopActors, Trajectory, TrajectoryAck,
)
from tests.messages_factory import trajectory


def _episode(episode_id, group_id=1, group_size=2):
    t = trajectory()
    return Trajectory(**{**t.__dict__, "episode_id": episode_id, "group_id": group_id,
                         "group_size": group_size})


def test_outbox_sends_once_resends_after_timeout_and_forgets_on_ack():
    box = Outbox(capacity=2, resend_after_s=10.0)
    box.add(_episode(1))
    assert [e.episode_id for e in box.due(now=0.0)] == [1]
    assert box.due(now=5.0) == []
    assert [e.episode_id for e in box.due(now=10.0)] == [1] and box.resends == 1
    box.add(_episode(2))
    assert box.full
    box.ack(1)
    box.ack(1)  # a repeated ack is harmless
    assert not box.full and list(box.acked) == [1] and list(box.pending) == [2]
    # At exit the actor resends sooner than resend_after_s (and never what is unsent twice).
    assert [e.episode_id for e in box.due(now=11.0)] == [2]
    assert box.due(now=12.0, resend_after_s=2.0) == []
    assert [e.episode_id for e in box.due(now=13.0, resend_after_s=2.0)] == [2]


def test_group_assembler_hands_out_complete_groups():
    asm = GroupAssembler()
    assert asm.add(_episode(2, group_id=7)) is None
    assert asm.add(_episode(10, group_id=8)) is None
    group = asm.add(_episode(1, group_id=7))
    assert [e.episode_id for e in group] == [1, 2] and 7 not in asm.partial


def test_group_assembler_keeps_a_bounded_number_of_partial_groups():
    asm = GroupAssembler(max_partial=3)
    for gid in range(10):  # a peer that never completes its groups
        asm.add(_episode(100 + gid, group_id=gid))
    assert list(asm.partial) == [7, 8, 9] and asm.evicted == 7
    assert [e.episode_id for e in asm.add(_episode(1, group_id=9))] == [1, 109]


@pytest.fixture
def receiver(small_cfg):
    ctx = zmq.Context()
    endpoint = wiring.learner_endpoint(ctx, small_cfg)
    ready = queue.Queue(maxsize=1)
    rx = TrajectoryReceiver(endpoint, ready, expected_actors=1)
    rx.start()
    actor = wiring.connect_dealer(ctx, small_cfg, wiring.learner_address(small_cfg, bind=False))
    yield small_cfg, rx, ready, actor
    rx.halt.set()
    rx.join(timeout=5)
    endpoint.close()
    actor.close(0)
    ctx.term()


def _send(cfg, sock, msg):
    sock.send_multipart(encode(msg, "actor-0", cfg.run.run_id, 1), copy=False)


def _recv(sock):
    assert sock.poll(5000)
    return decode(sock.recv_multipart(copy=False))[1]


def test_resent_episode_is_acked_but_counted_once(receiver):
    cfg, rx, ready, actor = receiver
    _send(cfg, actor, ActorHello(0, 2, 2))
    ep = _episode(5)
    _send(cfg, actor, ep)
    first = _recv(actor)
    _send(cfg, actor, ep)  # e.g. the first ack was lost and the actor resent
    second = _recv(actor)
    assert (first.episode_id, first.duplicate) == (5, False)
    assert (second.episode_id, second.duplicate) == (5, True)
    _send(cfg, actor, _episode(6))
    assert _recv(actor).duplicate is False
    group = ready.get(timeout=5)
    assert [e.episode_id for e in group] == [5, 6]
    assert list(rx.received) == [5, 6] and rx.duplicates == 1


def test_episodes_received_before_a_restart_are_acked_as_duplicates(receiver):
    from protocol.idset import IdSet

    cfg, rx, ready, actor = receiver
    rx.received = IdSet.from_ranges([[5, 7]])  # as a resumed learner restores them
    _send(cfg, actor, ActorHello(0, 2, 2))
    _send(cfg, actor, _episode(5))
    assert _recv(actor).duplicate is True and ready.empty() and rx.duplicates == 1


def test_full_queue_holds_back_and_drain_stops_actors(receiver):
    cfg, rx, ready, actor = receiver
    _send(cfg, actor, ActorHello(0, 2, 2))
    for i in range(4):  # two complete groups; the queue holds one
        _send(cfg, actor, _episode(i, group_id=i // 2))
    acks = [_recv(actor).episode_id for _ in range(4)]
    assert acks == [0, 1, 2, 3]
    time.sleep(0.3)
    assert ready.qsize() == 1 and len(rx.complete) == 1  # held back, not lost
    rx.drain("test over")
    assert isinstance(_recv(actor), StopActors)
    _send(cfg, actor, ActorDone(0, 4, 100))
    ack = _recv(actor)
    assert isinstance(ack, TrajectoryAck) and ack.episode_id == -1
    assert rx.all_done.wait(5) and rx.done[0].episodes_sent == 4


def test_an_actor_back_under_a_new_connection_is_told_to_stop_there_until_done(receiver):
    """A connection dropped by a heartbeat timeout comes back with a new identity and no
    hello: the learner finds the actor there from its episodes, and tells it to stop
    again every STOP_RESEND_S until it reports done (a ROUTER drops what it cannot
    deliver without a word)."""
    from learner.receiver import STOP_RESEND_S

    cfg, rx, ready, old = receiver
    _send(cfg, old, ActorHello(0, 2, 2))
    new = wiring.connect_dealer(zmq.Context.instance(), cfg,
                                wiring.learner_address(cfg, bind=False))
    try:
        _send(cfg, new, _episode(0))
        assert _recv(new).episode_id == 0
        rx.drain("test over")
        assert isinstance(_recv(new), StopActors)
        began = time.monotonic()
        assert isinstance(_recv(new), StopActors)  # told again: no ActorDone came
        assert time.monotonic() - began >= STOP_RESEND_S * 0.9
        _send(cfg, new, ActorDone(0, 1, 10))
        assert _recv(new).episode_id == -1 and rx.all_done.wait(5)
        assert not new.poll(int(STOP_RESEND_S * 1500))  # done: not told again
        assert not old.poll(0)  # the dead connection is not the actor's any more
    finally:
        new.close(0)


def test_malformed_trajectory_gets_an_error_and_receiver_lives(receiver):
    cfg, rx, ready, actor = receiver
    actor.send_multipart([b"\x93garbage"])
    reply = _recv(actor)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_header"
    _send(cfg, actor, _episode(9, group_id=3, group_size=1))
    assert _recv(actor).episode_id == 9
    assert rx.error is None and rx.endpoint.rejected == {"bad_header": 1}


def test_idset_keeps_ranges_and_rejects_repeats():
    ids = IdSet()
    for value in [5, 6, 7, 10, 9, 8, (1 << 32) | 0, (1 << 32) | 1, 3]:
        assert ids.add(value)
    assert not ids.add(7) and not ids.add(3)
    assert ids.ranges() == [[3, 4], [5, 11], [1 << 32, (1 << 32) + 2]]
    assert len(ids) == 9 and 4 not in ids and 10 in ids
    ids.add(4)
    assert ids.ranges()[0] == [3, 11]
    assert list(ids) == [3, 4, 5, 6, 7, 8, 9, 10, 1 << 32, (1 << 32) + 1]
    again = IdSet.from_ranges(ids.ranges())  # from a checkpoint
    assert again.ranges() == ids.ranges() and len(again) == len(ids)
    assert not again.add(9) and again.add(11)
    with pytest.raises(ValueError, match="disjoint"):
        IdSet.from_ranges([[0, 5], [3, 8]])


def test_while_the_learner_is_behind_episodes_are_read_parked_and_taken_later(receiver):
    """The socket is read even while the ready queue is full (libzmq must never stop
    reading it): episodes are parked unacknowledged, a resend replaces its copy, at most
    ``max_parked`` are kept (the rest are dropped unacknowledged, so their actor sends
    them again), and all are taken once the learner has room."""
    cfg, rx, ready, actor = receiver
    rx.max_parked = 2
    _send(cfg, actor, ActorHello(0, 2, 2))
    for i in range(4):  # group 0 fills the queue, group 1 waits in ``complete``
        _send(cfg, actor, _episode(i, group_id=i // 2))
    assert [_recv(actor).episode_id for _ in range(4)] == [0, 1, 2, 3]
    for i in (4, 5, 4, 6):  # group 2, a resend of 4, then one more than fits
        _send(cfg, actor, _episode(i, group_id=2 + (i == 6)))
    time.sleep(0.5)
    assert not actor.poll(0)  # nothing acknowledged while behind
    assert list(rx.parked) == [4, 5] and rx.parked_dropped == 1
    ready.get()  # the learner takes group 0: group 1 moves up, then the parked are taken
    assert sorted(_recv(actor).episode_id for _ in range(2)) == [4, 5]
    assert not rx.parked and [e.episode_id for e in ready.get(timeout=5)] == [2, 3]
    _send(cfg, actor, _episode(6, group_id=3))  # the actor's resend of the dropped one
    assert _recv(actor).episode_id == 6
    assert rx.duplicates == 0


def test_an_endpoint_belongs_to_the_first_thread_that_uses_it(small_cfg):
    import threading

    from protocol.endpoint import SocketThreadError

    ctx = zmq.Context()
    endpoint = wiring.learner_endpoint(ctx, small_cfg)
    try:
        endpoint.poll(0)  # this thread owns it now
        errors = []

        def other():
            try:
                endpoint.poll(0)
            except SocketThreadError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and "belongs to one thread" in errors[0]
        endpoint.poll(0)  # the owner still may
    finally:
        endpoint.close()
        ctx.term()
