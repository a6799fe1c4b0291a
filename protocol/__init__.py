"""chunkrl's wire format: message types, the codec, and the socket wiring.

Every message is a frozen dataclass in :mod:`protocol.messages`; :mod:`protocol.codec`
turns one into ZeroMQ frames and back, validating everything it receives;
:mod:`protocol.wiring` says which socket binds or connects where. The format is
specified for other languages in ``protocol/README.md``.
"""

from protocol.codec import SCHEMA_VERSION, Envelope, ProtocolError, decode, encode
from protocol.messages import (
    MESSAGE_TYPES,
    ActionReply,
    ActorDone,
    ActorHello,
    ErrorReply,
    EvalRound,
    Heartbeat,
    ObsRequest,
    Register,
    Roster,
    StopActors,
    Trajectory,
    TrajectoryAck,
)

__all__ = [
    "SCHEMA_VERSION", "Envelope", "ProtocolError", "decode", "encode", "MESSAGE_TYPES",
    "ActionReply", "ActorDone", "ActorHello", "ErrorReply", "EvalRound", "ObsRequest",
    "StopActors",
    "Trajectory", "TrajectoryAck", "Register", "Heartbeat", "Roster",
]
