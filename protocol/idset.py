"""A compact set of episode ids, for exactly-once delivery over long runs.

Episode ids (:mod:`protocol.ids`) count up per actor process and arrive nearly in order, so the
set is kept as sorted, disjoint half-open ranges ``[start, end)``: a run of a million
consecutive episodes is one range, and memory stays flat however long the run.
"""

from __future__ import annotations

import bisect


class IdSet:
    """Integers as sorted disjoint ranges; ``add`` returns False for an id already in."""

    def __init__(self):
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._count = 0

    @classmethod
    def from_ranges(cls, ranges: list[list[int]]) -> "IdSet":
        """The set that ``ranges()`` described (from a checkpoint or summary)."""
        ids = cls()
        for start, end in sorted(ranges):
            if end <= start or (ids._ends and start < ids._ends[-1]):
                raise ValueError(f"id ranges must be ascending and disjoint: {ranges}")
            if ids._ends and start == ids._ends[-1]:
                ids._ends[-1] = end
            else:
                ids._starts.append(start)
                ids._ends.append(end)
            ids._count += end - start
        return ids

    def __len__(self) -> int:
        return self._count

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def add(self, value: int) -> bool:
        """Insert ``value``; False if it was already there."""
        if self._ends and self._ends[-1] == value:  # the common case: next in order
            self._ends[-1] += 1
            self._merge(len(self._ends) - 1)
            self._count += 1
            return True
        if value in self:
            return False
        i = bisect.bisect_right(self._starts, value)
        if i > 0 and self._ends[i - 1] == value:
            self._ends[i - 1] += 1
            self._merge(i - 1)
        elif i < len(self._starts) and self._starts[i] == value + 1:
            self._starts[i] = value
        else:
            self._starts.insert(i, value)
            self._ends.insert(i, value + 1)
        self._count += 1
        return True

    def _merge(self, i: int) -> None:
        if i + 1 < len(self._starts) and self._ends[i] == self._starts[i + 1]:
            self._ends[i] = self._ends.pop(i + 1)
            self._starts.pop(i + 1)

    def ranges(self) -> list[list[int]]:
        """The ranges as ``[[start, end), ...]``, for JSON."""
        return [[s, e] for s, e in zip(self._starts, self._ends)]

    def __iter__(self):
        for s, e in zip(self._starts, self._ends):
            yield from range(s, e)
