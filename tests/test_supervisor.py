"""The supervisor restarts dying children with backoff up to the limit, and does not
restart a configuration error or a role that gave up on the learner."""

import dataclasses
import sys
import time

from launcher.supervisor import Supervisor, describe_exit


def _supervisor(cfg, tmp_path, code: int, max_restarts: int = 2):
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(
        cfg.run, max_restarts=max_restarts, restart_backoff_s=0.05))
    starts = tmp_path / "starts"

    def command(slot):
        # Each start appends its start number, then exits with ``code``.
        return [sys.executable, "-c", f"open({str(starts)!r}, 'a').write('{slot.starts} ');"
                f"raise SystemExit({code})"]
    return Supervisor(cfg, [("actor", 0)], command, tmp_path), starts


def _run(sup, timeout=20) -> str:
    sup.start_all()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sup.check()
        if state or sup.all_ended():
            return state
        time.sleep(0.02)
    raise AssertionError("the supervisor did not settle")


def test_a_crashing_child_is_restarted_up_to_the_limit(small_cfg, tmp_path):
    sup, starts = _supervisor(small_cfg, tmp_path, code=1)
    state = _run(sup)
    assert state.startswith("failed: actor-0 died (exit code 1)")
    assert "restarted 2 times (run.max_restarts=2)" in state
    assert starts.read_text().split() == ["0", "1", "2"]  # run.start of each start
    assert sup.restarts == 2


def test_config_errors_and_a_lost_learner_are_not_restarted(small_cfg, tmp_path):
    sup, starts = _supervisor(small_cfg, tmp_path, code=2)
    assert "a configuration error is not restarted" in _run(sup)
    assert starts.read_text().split() == ["0"]
    (tmp_path / "starts").unlink()
    sup, starts = _supervisor(small_cfg, tmp_path, code=3)
    assert _run(sup) == "" and sup.all_ended() and starts.read_text().split() == ["0"]


def test_exit_descriptions():
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(1) == "exit code 1"


def test_a_restarted_learner_resumes_or_says_it_starts_again_at_version_0(tmp_path, caplog):
    from launcher.supervisor import restart_overrides

    assert restart_overrides("actor", 3, tmp_path, 100) == ["run.start=3"]
    assert restart_overrides("learner", 0, tmp_path, 100) == ["run.start=0"]  # first start
    with caplog.at_level("WARNING", logger="launch"):
        assert restart_overrides("learner", 1, tmp_path, 0) == ["run.start=1"]
    assert "restarts from version 0" in caplog.text and "learner.checkpoint_every=0" in \
        caplog.text and str(tmp_path) in caplog.text
    caplog.clear()
    (tmp_path / "checkpoint.json").write_text("{}")
    with caplog.at_level("WARNING", logger="launch"):
        assert restart_overrides("learner", 2, tmp_path, 10) == ["run.start=2",
                                                                 "run.resume=true"]
    assert not caplog.text
