"""The learner's stall report (learner/stalls.py): faulthandler's watchdog, for real."""

import threading
import time

from learner.stalls import StallReport


def _stuck_here(seconds: float) -> None:
    time.sleep(seconds)


def test_a_loop_that_stops_coming_round_gets_every_threads_stack(tmp_path):
    path = tmp_path / "stalls.txt"
    report = StallReport(path, 0.4)
    other = threading.Thread(target=_stuck_here, args=(1.5,), name="helper")
    other.start()
    report.tick()
    _stuck_here(1.0)
    report.close()
    other.join()
    text = path.read_text()
    assert text.startswith("Timeout (0:00:00.4")  # faulthandler's header
    assert text.count("_stuck_here") >= 2  # this thread and the other, both stuck there
    assert "test_a_loop_that_stops_coming_round" in text


def test_a_loop_that_keeps_coming_round_leaves_no_file(tmp_path):
    path = tmp_path / "stalls.txt"
    report = StallReport(path, 0.4)
    for _ in range(12):
        report.tick()
        time.sleep(0.05)
    report.close()
    assert not path.exists()
    off = StallReport(tmp_path / "off.txt", 0)
    off.tick()
    off.close()
    assert not (tmp_path / "off.txt").exists()
