"""chunkrl's wire format: message types, the codec, episode ids (no config, no sockets made).

Every message is a frozen dataclass in :mod:`protocol.messages`; :mod:`protocol.codec`
turns one into ZeroMQ frames and back, validating everything it receives;
:mod:`protocol.ids` lays out episode ids. Which socket binds or connects where, and how
processes register and get weights, is :mod:`links`. The format is specified for other
languages in ``protocol/README.md``.
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
