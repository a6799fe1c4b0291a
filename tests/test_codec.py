"""Codec round trips of every message type, and rejection of every kind of bad frame."""

import dataclasses

import msgpack
import numpy as np
import pytest

from protocol.codec import SCHEMA_VERSION, ProtocolError, decode, encode
from protocol.messages import MESSAGE_TYPES, ActionReply, ObsRequest
from tests.messages_factory import every_message, obs_request


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (a is not None and b is not None and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    return a == b


@pytest.mark.parametrize("msg", every_message(), ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    frames = encode(msg, "actor-3", "run-x", 41)
    env, back = decode(frames)
    assert (env.type, env.sender, env.run, env.seq) == (type(msg).__name__, "actor-3", "run-x", 41)
    assert type(back) is type(msg)
    for f in dataclasses.fields(msg):
        assert _equal(getattr(msg, f.name), getattr(back, f.name)), f.name


def test_every_type_is_covered():
    assert {type(m).__name__ for m in every_message()} == set(MESSAGE_TYPES)


def test_arrays_are_zero_copy_views_of_the_frames():
    frames = encode(obs_request(), "a", "r", 1)
    _, back = decode(frames)
    assert not back.main_images.flags.owndata
    assert np.shares_memory(back.main_images, np.frombuffer(frames[1], np.uint8))


def _header(frames) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def _with_header(frames, **changes):
    h = _header(frames)
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _rejects(frames, code, **kw):
    with pytest.raises(ProtocolError) as info:
        decode(frames, **kw)
    assert info.value.code == code, str(info.value)
    return info.value


def test_rejects_garbage_and_empty():
    _rejects([], "empty")
    _rejects([b"\xc1\xff garbage"], "bad_header")
    _rejects([msgpack.packb([1, 2, 3])], "bad_header")
    _rejects([msgpack.packb({"type": "ObsRequest"})], "bad_header")


def test_rejects_wrong_version_and_unknown_type():
    frames = encode(obs_request(), "a", "r", 1)
    _rejects(_with_header(frames, schema=SCHEMA_VERSION + 1), "bad_version")
    _rejects(_with_header(frames, type="Pickle"), "unknown_type")
    _rejects(frames, "unexpected_type", expected=(ActionReply,))


def test_rejects_truncated_and_extra_frames():
    frames = encode(obs_request(), "a", "r", 1)
    err = _rejects(frames[:-1], "truncated")
    assert err.request_id == 7  # the error reply can name the request
    _rejects([*frames, b"extra"], "truncated")
    short = list(frames)
    short[1] = bytes(memoryview(frames[1]))[:-5]
    _rejects(short, "bad_size")


def test_rejects_oversized():
    frames = encode(obs_request(size=64), "a", "r", 1)
    _rejects(frames, "too_large", max_bytes=10_000)


def test_rejects_bad_arrays():
    frames = encode(obs_request(wrist=False, extra=False), "a", "r", 1)
    h = _header(frames)
    bad = dict(h, arrays=[dict(h["arrays"][0], dtype="float32"), h["arrays"][1]])
    _rejects([msgpack.packb(bad), *frames[1:]], "bad_dtype")
    bad = dict(h, arrays=[dict(h["arrays"][0], shape=[3, 8, 8]), h["arrays"][1]])
    _rejects([msgpack.packb(bad), *frames[1:]], "bad_shape")
    bad = dict(h, arrays=[h["arrays"][0], dict(h["arrays"][1], shape=[4, 2])])
    _rejects([msgpack.packb(bad), *frames[1:]], "bad_shape")  # B=3 vs B=4
    bad = dict(h, arrays=[dict(h["arrays"][0], name="pixels"), h["arrays"][1]])
    _rejects([msgpack.packb(bad), *frames[1:]], "bad_array")
    bad = dict(h, arrays=[h["arrays"][0]])
    _rejects([msgpack.packb(bad), frames[1]], "missing_array")


def test_rejects_bad_fields():
    frames = encode(obs_request(), "a", "r", 1)
    h = _header(frames)
    _rejects(_with_header(frames, fields=dict(h["fields"], request_id="7")), "bad_field")
    _rejects(_with_header(frames, fields=dict(h["fields"], request_id=True)), "bad_field")
    _rejects(_with_header(frames, fields=dict(h["fields"], extra=1)), "bad_fields")
    _rejects(_with_header(frames, fields=dict(h["fields"], task_descriptions=["a"])),
             "bad_shape")


def test_random_bytes_only_raise_protocol_errors():
    rng = np.random.default_rng(1)
    good = encode(obs_request(), "a", "r", 1)
    for i in range(300):
        frames = [bytes(memoryview(f)) for f in good]
        k = int(rng.integers(len(frames)))
        buf = bytearray(frames[k])
        for _ in range(int(rng.integers(1, 8))):
            buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        frames[k] = bytes(buf[: int(rng.integers(1, len(buf) + 1))])
        try:
            decode(frames)
        except ProtocolError:
            pass


def test_no_pickle_on_the_wire():
    import pathlib

    for path in pathlib.Path("protocol").glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path
    assert isinstance(decode(encode(obs_request(), "a", "r", 1))[1], ObsRequest)


def test_odd_msgpack_types_are_protocol_errors():
    frames = encode(obs_request(), "a", "r", 1)
    h = _header(frames)
    mixed = dict(h)
    mixed[b"binkey"] = 1
    _rejects([msgpack.packb(mixed, use_bin_type=True), *frames[1:]], "bad_header")
    fields = dict(h["fields"])
    fields[b"x"] = 1
    _rejects(_with_header(frames, fields=fields), "bad_fields")
    bad = dict(h, arrays=[dict(h["arrays"][0], name=["main_images"]), *h["arrays"][1:]])
    _rejects([msgpack.packb(bad), *frames[1:]], "bad_array")
    err = _rejects(_with_header(frames, fields=dict(h["fields"], request_id=True)),
                   "bad_field")
    assert err.request_id == -1  # a bool is no request id to echo back


def test_log_limiter_holds_back_a_flood_and_reports_it():
    import time

    from protocol.endpoint import LogLimiter

    limiter = LogLimiter(burst=3, window_s=0.2)
    assert [limiter.allow()[0] for _ in range(10)] == [True] * 3 + [False] * 7
    time.sleep(0.25)
    assert limiter.allow() == (True, 7)  # the next window's first line says how many
    assert limiter.allow() == (True, 0)


def test_rejects_non_finite_floats():
    """NaN or inf in a float array or float field: ``non_finite``, naming the field."""
    from tests.messages_factory import trajectory

    for bad in (np.nan, np.inf, -np.inf):
        msg = obs_request()
        states = msg.states.copy()
        states[1, 2] = bad
        err = _rejects(encode(dataclasses.replace(msg, states=states), "a", "r", 1),
                       "non_finite")
        assert "ObsRequest.states holds 1 non-finite value" in str(err)
    ep = trajectory()
    logprobs = ep.logprobs.copy()
    logprobs[0, 0, 0] = np.nan
    _rejects(encode(dataclasses.replace(ep, logprobs=logprobs), "a", "r", 1), "non_finite")
    _rejects(encode(dataclasses.replace(ep, episode_return=float("inf")), "a", "r", 1),
             "non_finite")
    decode(encode(ep, "a", "r", 1))  # the same episode, finite, passes
