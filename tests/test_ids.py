"""The episode/group id layout (protocol/ids.py) at its bit boundaries."""

import numpy as np
import pytest

from configs import load_config
from protocol import ids


@pytest.mark.parametrize("parts", [
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (ids.MAX_INCARNATION, ids.MAX_ACTOR, ids.MAX_COUNTER),
    (ids.MAX_INCARNATION, 0, 0), (0, ids.MAX_ACTOR, 0), (0, 0, ids.MAX_COUNTER),
    (257, 3, 12345),
])
def test_encode_decode_round_trip_at_the_bit_boundaries(parts):
    id_ = ids.encode(*parts)
    assert ids.decode(id_) == parts
    assert ids.actor_of(id_) == (parts[1], parts[0])
    # It stays a non-negative int64: ids travel and are stored as int64.
    assert int(np.array([id_], dtype=np.int64)[0]) == id_ >= 0


def test_neighbouring_parts_never_overlap():
    top_counter = ids.encode(0, 0, ids.MAX_COUNTER)
    assert ids.encode(0, 1, 0) == top_counter + 1
    top_actor = ids.encode(0, ids.MAX_ACTOR, ids.MAX_COUNTER)
    assert ids.encode(1, 0, 0) == top_actor + 1
    assert ids.encode(ids.MAX_INCARNATION, ids.MAX_ACTOR, ids.MAX_COUNTER) == 2 ** 63 - 1


@pytest.mark.parametrize("parts", [
    (ids.MAX_INCARNATION + 1, 0, 0), (0, ids.MAX_ACTOR + 1, 0), (0, 0, ids.MAX_COUNTER + 1),
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
])
def test_a_part_that_does_not_fit_is_refused(parts):
    with pytest.raises(ValueError, match="outside"):
        ids.encode(*parts)


@pytest.mark.parametrize("bad", [-1, 2 ** 63])
def test_decode_refuses_what_encode_cannot_make(bad):
    with pytest.raises(ValueError, match="63-bit"):
        ids.decode(bad)


def test_id_source_counts_episodes_and_groups_apart():
    source = ids.IdSource(actor_index=7, incarnation=3)
    assert [ids.decode(source.episode()) for _ in range(2)] == [(3, 7, 0), (3, 7, 1)]
    assert ids.decode(source.group()) == (3, 7, 0)


def test_the_config_admits_exactly_the_incarnations_the_ids_hold():
    top = load_config(None, [f"run.incarnation={ids.MAX_INCARNATION >> 8}", "run.start=255"])
    assert top.incarnation == ids.MAX_INCARNATION
    ids.encode(top.incarnation, 0, 0)
    with pytest.raises(ValueError, match="run.incarnation must be in 0..127"):
        load_config(None, [f"run.incarnation={(ids.MAX_INCARNATION >> 8) + 1}"])
