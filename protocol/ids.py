"""Episode and group ids: the one owner of their bit layout.

An id is a signed 64-bit integer (it travels as one and is stored in int64 arrays)::

    id = incarnation << 48 | actor_index << 32 | counter

    bits 63     sign, always 0
    bits 48..62 incarnation: the actor's process start, ``run.incarnation << 8 | run.start``
    bits 32..47 actor_index
    bits  0..31 counter: the actor's episodes (or groups) so far in this process

The incarnation makes the ids of a restarted or resumed actor differ from everything it
sent before, so the learner can neither train an episode twice nor mistake a new one for
an old duplicate. Episodes and groups have counters of their own; the two id spaces are
separate (a group id is never compared with an episode id).
"""

from __future__ import annotations

from dataclasses import dataclass

INCARNATION_BITS = 15  # 63 bits in all: the id stays a non-negative int64
ACTOR_BITS = 16
COUNTER_BITS = 32
ACTOR_SHIFT = COUNTER_BITS
INCARNATION_SHIFT = COUNTER_BITS + ACTOR_BITS

MAX_INCARNATION = (1 << INCARNATION_BITS) - 1
MAX_ACTOR = (1 << ACTOR_BITS) - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1


def encode(incarnation: int, actor_index: int, counter: int) -> int:
    """The id of ``counter``-th episode (or group) of actor ``actor_index`` in process
    start ``incarnation``; ValueError when a part does not fit its bits."""
    for name, value, top in (("incarnation", incarnation, MAX_INCARNATION),
                             ("actor_index", actor_index, MAX_ACTOR),
                             ("counter", counter, MAX_COUNTER)):
        if not 0 <= value <= top:
            raise ValueError(f"episode id: {name} {value} outside 0..{top}")
    return incarnation << INCARNATION_SHIFT | actor_index << ACTOR_SHIFT | counter


def decode(id_: int) -> tuple[int, int, int]:
    """(incarnation, actor_index, counter) of an id made by :func:`encode`."""
    if not 0 <= id_ < 1 << (INCARNATION_SHIFT + INCARNATION_BITS):
        raise ValueError(f"episode id {id_} is not a non-negative 63-bit integer")
    return (id_ >> INCARNATION_SHIFT, (id_ >> ACTOR_SHIFT) & MAX_ACTOR,
            id_ & MAX_COUNTER)


def actor_of(id_: int) -> tuple[int, int]:
    """(actor index, incarnation) of an episode or group id: who sent it."""
    incarnation, actor_index, _ = decode(id_)
    return actor_index, incarnation


@dataclass
class IdSource:
    """Episode and group ids of one actor process, each with its own counter."""

    actor_index: int
    incarnation: int = 0
    episodes: int = 0
    groups: int = 0

    def episode(self) -> int:
        """The next episode id."""
        self.episodes += 1
        return encode(self.incarnation, self.actor_index, self.episodes - 1)

    def group(self) -> int:
        """The next group id."""
        self.groups += 1
        return encode(self.incarnation, self.actor_index, self.groups - 1)
