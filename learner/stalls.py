"""Every thread's stack, written when the learner's loop has not come round for a while.

A learner that stops taking updates without an error (a collective waiting on a peer that
died, a destructor joining a stuck thread) leaves nothing in its log: the loop that would
log is the one stuck. :class:`StallReport` arms :mod:`faulthandler`'s watchdog, whose own
C thread writes every Python thread's stack to a file when ``learner.stall_report_s``
passes without a :meth:`~StallReport.tick`, and again after each further such period (the
stall may move). The file's modification time says when.
"""

from __future__ import annotations

import faulthandler
import time
from pathlib import Path


class StallReport:
    """Arms the watchdog; :meth:`tick` from the loop re-arms it (at most four times per
    period: a re-arm starts a new watchdog thread), so a report comes after 3/4 to 1 of
    ``seconds`` without a tick. ``seconds`` 0: no report, no file."""

    def __init__(self, path: Path, seconds: float):
        self.path, self.seconds = path, seconds
        self._file = open(path, "a") if seconds > 0 else None
        self._armed_at = -float("inf")

    def tick(self) -> None:
        """The loop has come round: the watchdog's countdown starts again."""
        now = time.monotonic()
        if self._file is not None and now - self._armed_at >= self.seconds / 4:
            faulthandler.dump_traceback_later(self.seconds, repeat=True, file=self._file)
            self._armed_at = now

    def close(self) -> None:
        """Disarm; the file stays only if a report was written into it."""
        if self._file is None:
            return
        faulthandler.cancel_dump_traceback_later()
        self._file.close()
        self._file = None
        if self.path.stat().st_size == 0:
            self.path.unlink()
