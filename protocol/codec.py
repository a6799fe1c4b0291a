"""Encode a message into ZeroMQ frames and decode + validate frames into a message.

A message is a multipart: frame 0 is a msgpack map (the header), frames 1..n are the raw
bytes of each array present, in the order of the header's ``arrays`` list. Arrays are
sent without copying and read back with ``np.frombuffer`` (read-only views of the frames).
No pickle: a header is plain msgpack, an array is bytes with a declared dtype and shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import msgpack
import numpy as np

from protocol.messages import MESSAGE_TYPES
from protocol.spec import ArraySpec, ScalarSpec, np_dtype, wire_fields

SCHEMA_VERSION = 5
HEADER_KEYS = frozenset({"schema", "type", "sender", "run", "seq", "fields", "arrays"})
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


class ProtocolError(ValueError):
    """A received message broke the wire format; ``code`` names the rule it broke."""

    def __init__(self, code: str, message: str, request_id: int = -1):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Envelope:
    """Who sent a message and in which run; carried in every header."""

    type: str
    sender: str
    run: str
    seq: int


def encode(msg, sender: str, run: str, seq: int) -> list:
    """Frames for ``msg``: [header bytes, array buffers...]; send with ``copy=False``."""
    fields, descriptors, buffers = {}, [], []
    for name, spec in wire_fields(type(msg)):
        value = getattr(msg, name)
        if isinstance(spec, ScalarSpec):
            fields[name] = value
            continue
        if value is None:
            if not spec.optional:
                raise ValueError(f"{type(msg).__name__}.{name} is required")
            continue
        arr = np.ascontiguousarray(value, dtype=np_dtype(spec.dtype))
        descriptors.append({"name": name, "dtype": spec.dtype,
                            "shape": list(arr.shape), "nbytes": arr.nbytes})
        buffers.append(memoryview(arr).cast("B") if arr.nbytes else b"")
    header = {"schema": SCHEMA_VERSION, "type": type(msg).__name__, "sender": sender,
              "run": run, "seq": seq, "fields": fields, "arrays": descriptors}
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def decode(frames: Sequence, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           expected: tuple[type, ...] = ()) -> tuple[Envelope, object]:
    """Validate ``frames`` and build the message; raise :class:`ProtocolError` if bad.

    ``expected`` restricts the accepted message types (a server only takes requests).
    Nothing else escapes: a case the rules below miss is still a ``malformed`` error.
    """
    try:
        return _decode(frames, max_bytes, expected)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError("malformed", f"malformed message: {type(exc).__name__}: {exc}") \
            from None


def _decode(frames: Sequence, max_bytes: int, expected: tuple) -> tuple[Envelope, object]:
    if not frames:
        raise ProtocolError("empty", "empty message: expected a msgpack header frame")
    views = [memoryview(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes exceeds the limit of "
                            f"{max_bytes}; send smaller batches or raise max_message_bytes")
    header = _read_header(views[0])
    cls = MESSAGE_TYPES.get(header["type"])
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {header['type']!r}; "
                            f"known: {sorted(MESSAGE_TYPES)}")
    if expected and cls not in expected:
        raise ProtocolError("unexpected_type", f"{cls.__name__} is not accepted here; "
                            f"expected {[c.__name__ for c in expected]}")
    request_id = header["fields"].get("request_id", -1) if isinstance(
        header["fields"], dict) else -1
    request_id = request_id if type(request_id) is int else -1
    try:
        values = _read_body(cls, header, views[1:])
    except ProtocolError as err:
        err.request_id = request_id
        raise
    env = Envelope(header["type"], header["sender"], header["run"], header["seq"])
    return env, cls(**values)


def _read_header(view: memoryview) -> dict:
    if view.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {view.nbytes} bytes exceeds "
                            f"{MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("bad_header", f"header frame is not valid msgpack: {exc}") from None
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        keys = sorted(map(repr, header)) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError("bad_header", f"header must be a map with keys "
                            f"{sorted(HEADER_KEYS)}, got {keys}")
    if header["schema"] != SCHEMA_VERSION:
        raise ProtocolError("bad_version", f"schema version {header['schema']!r} is not "
                            f"{SCHEMA_VERSION}; run the same chunkrl version on both ends")
    for key, kind in (("type", str), ("sender", str), ("run", str), ("seq", int),
                      ("fields", dict), ("arrays", list)):
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise ProtocolError("bad_header", f"header[{key!r}] must be {kind.__name__}")
    return header


def _read_body(cls, header: dict, frames: list[memoryview]) -> dict:
    specs = dict(wire_fields(cls))
    scalars = {n for n, s in specs.items() if isinstance(s, ScalarSpec)}
    given = header["fields"]
    if set(given) != scalars:
        raise ProtocolError("bad_fields", f"{cls.__name__} fields must be {sorted(scalars)}, "
                            f"got {sorted(map(repr, given))}")
    descriptors = header["arrays"]
    if len(descriptors) != len(frames):
        raise ProtocolError("truncated", f"{cls.__name__}: header describes "
                            f"{len(descriptors)} arrays but {len(frames)} frames followed")
    dims: dict[str, int] = {}
    values: dict = {}
    for desc, frame in zip(descriptors, frames):
        name, arr = _read_array(cls, specs, desc, frame, dims)
        if name in values:
            raise ProtocolError("bad_array", f"{cls.__name__}.{name} sent twice")
        values[name] = arr
    for name, spec in specs.items():
        if isinstance(spec, ArraySpec) and name not in values:
            if not spec.optional:
                raise ProtocolError("missing_array", f"{cls.__name__}.{name} is required")
            values[name] = None
    for name in scalars:
        values[name] = _check_scalar(cls, name, specs[name], given[name], dims)
    return values


def _read_array(cls, specs, desc, frame: memoryview, dims: dict) -> tuple[str, np.ndarray]:
    if not isinstance(desc, dict) or set(desc) != {"name", "dtype", "shape", "nbytes"}:
        raise ProtocolError("bad_array", "array descriptor must be a map with keys "
                            "['dtype', 'name', 'nbytes', 'shape']")
    name = desc["name"]
    spec = specs.get(name) if isinstance(name, str) else None
    if not isinstance(spec, ArraySpec):
        raise ProtocolError("bad_array", f"{cls.__name__} has no array field {name!r}")
    if desc["dtype"] != spec.dtype:
        raise ProtocolError("bad_dtype", f"{cls.__name__}.{name} must be {spec.dtype}, "
                            f"got {desc['dtype']!r}")
    shape = desc["shape"]
    if (not isinstance(shape, list) or len(shape) != len(spec.shape)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in shape)):
        raise ProtocolError("bad_shape", f"{cls.__name__}.{name} shape must be "
                            f"{list(spec.shape)}, got {shape!r}")
    for want, got in zip(spec.shape, shape):
        if isinstance(want, int) and want != got:
            raise ProtocolError("bad_shape", f"{cls.__name__}.{name} shape {shape} must "
                                f"match {list(spec.shape)}")
        if isinstance(want, str) and dims.setdefault(want, got) != got:
            raise ProtocolError("bad_shape", f"{cls.__name__}.{name}: dimension {want}={got}"
                                f" disagrees with {want}={dims[want]} of an earlier array")
    dtype = np_dtype(spec.dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if desc["nbytes"] != nbytes or frame.nbytes != nbytes:
        raise ProtocolError("bad_size", f"{cls.__name__}.{name}: {list(shape)} {spec.dtype} "
                            f"is {nbytes} bytes; descriptor says {desc['nbytes']}, frame has "
                            f"{frame.nbytes}")
    arr = np.frombuffer(frame, dtype=dtype).reshape(shape)
    # NaN or inf in a state, log-prob, reward or action would flow into a forward pass, the
    # loss, the optimizer state and every server's weights: refused at the door.
    if dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ProtocolError("non_finite", f"{cls.__name__}.{name} holds {bad} non-finite "
                            "value(s) (NaN or inf)")
    return name, arr


def _check_scalar(cls, name: str, spec: ScalarSpec, value, dims: dict):
    ok = isinstance(value, spec.kind)
    if spec.kind is int:
        ok = ok and not isinstance(value, bool)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and spec.kind is list:
        ok = all(isinstance(v, str) for v in value)
        if ok and spec.length and dims.get(spec.length, len(value)) != len(value):
            raise ProtocolError("bad_shape", f"{cls.__name__}.{name} has {len(value)} entries "
                                f"but {spec.length}={dims[spec.length]}")
    if not ok:
        raise ProtocolError("bad_field", f"{cls.__name__}.{name} must be "
                            f"{spec.kind.__name__}, got {type(value).__name__}")
    if spec.kind is float and not math.isfinite(value):
        raise ProtocolError("non_finite", f"{cls.__name__}.{name} is {value} (must be finite)")
    return value
