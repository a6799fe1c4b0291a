"""Profiling: the recorder, the report's figures on hand-built profiles, the diagnosis
rules, the Chrome trace, and a real --profile run checked against the run's own counts."""

from __future__ import annotations

import json

import pytest

from profiling.diagnosis import diagnose
from profiling.recorder import OFF, Profiler
from profiling.report import build_report, load_profiles, write_report
from tests.conftest import launch

T0 = 1_000.0  # wall-clock origin of the hand-built profiles


def test_recorder_keeps_long_spans_counts_short_ones_and_bounds_memory(tmp_path):
    prof = Profiler("actor-0", max_events=2, min_span_us=100)
    prof.add("env_step", 10.0, 10.5, stage=1)
    prof.add("wait_action", 11.0, 11.00001)  # 10 us: in the totals only
    prof.add("env_step", 12.0, 12.25)
    prof.add("env_step", 13.0, 13.25)  # over max_events: dropped, still counted
    with prof.span("observe_send"):
        pass
    prof.sample("env_steps", 64, t=10.5)
    data = json.loads(prof.write(tmp_path).read_text())
    assert [s[0] for s in data["spans"]] == ["env_step", "env_step"]
    assert data["spans"][0][1:3] == [10.0, 0.5] and data["spans"][0][4] == {"stage": 1}
    assert data["totals"]["env_step"] == [3, pytest.approx(1.0)]
    assert data["totals"]["wait_action"][0] == 1 and data["dropped"] >= 1
    assert data["samples"]["env_steps"] == [[10.5, 64.0]]
    assert (tmp_path / "profile" / "actor-0.json").is_file()
    assert OFF.write(tmp_path) is None and not OFF.enabled


def _profile(folder, role, spans=(), samples=None, counters=None, meta=None,
             started=T0, ended=T0 + 20, cpu_s=1.0, pid=1):
    (folder / "profile").mkdir(exist_ok=True)
    (folder / "profile" / f"{role}.json").write_text(json.dumps({
        "schema": 1, "role": role, "pid": pid, "started": started, "ended": ended,
        "spans": [list(s) for s in spans], "samples": samples or {}, "totals": {},
        "counters": counters or {}, "meta": meta or {}, "dropped": 0, "cpu_s": cpu_s,
        "host": "h", "host_cpus": 8}))


META = {"max_batch": 8, "max_wait_ms": 5, "num_actors": 1, "num_servers": 1,
        "envs_per_actor": 8, "pipeline_stages": 2, "warmup_s": 2.0, "duration_s": 20}


@pytest.fixture
def hand_built(tmp_path):
    """One actor stepping from T0+1; the window is [T0+3, T0+13] (2 s warm-up, the
    learner's profile ends at T0+13)."""
    # env_step: 0.5 s every second from T0+1 (the first one starts the clock); the span
    # at T0+12.8 is clipped to 0.2 s by the window's end.
    steps = [("env_step", T0 + k, 0.5, 0, {}) for k in range(1, 12)] + \
        [("env_step", T0 + 12.8, 0.5, 0, {})]
    waits = [("wait_action", T0 + k + 0.5, 0.25, 0, {}) for k in range(1, 12)]
    _profile(tmp_path, "actor-0", steps + waits, pid=1, cpu_s=2.0,
             samples={"env_steps": [[T0 + k + 0.5, 64] for k in range(1, 13)],
                      "action_rtt_ms": [[T0 + 5, 10.0], [T0 + 6, 30.0]]},
             counters={"bytes_sent:actor->inference": 2000.0})
    forward = [("forward", T0 + k, 0.1, 0, {"rows": 4}) for k in range(3, 13)]
    _profile(tmp_path, "inference-0", forward + [("weights_apply", T0 + 5, 0.002, 0, {})],
             pid=2, cpu_s=4.0, meta=META,
             samples={"batch_rows": [[T0 + k, 4] for k in range(3, 13)],
                      "queue_ms": [[T0 + 4, 1.0], [T0 + 5, 3.0]],
                      "compute_ms": [[T0 + 4, 10.0], [T0 + 5, 20.0]],
                      "queue_requests": [[T0 + 4, 0], [T0 + 5, 2]]})
    _profile(tmp_path, "learner", [("update", T0 + 4, 1.0, 0, {"samples": 32}),
                                   ("broadcast", T0 + 5, 0.01, 0, {"bytes": 1000}),
                                   ("wait_data", T0 + 6, 2.0, 0, {})],
             pid=3, cpu_s=6.0, meta=META, ended=T0 + 13,
             samples={"samples": [[T0 + 5, 32]], "policy_lag": [[T0, 0], [T0, 1], [T0, 1]]})
    return tmp_path


def test_report_figures_on_a_hand_built_profile(hand_built):
    r = build_report(hand_built)
    assert r["window_s"] == pytest.approx(10.0)
    a, i, L, w = r["actors"], r["inference"], r["learner"], r["weights"]
    # env_steps samples at T0+3.5 .. T0+12.5 are in the window: 10 x 64 steps in 10 s.
    assert a["env_steps_per_s"] == pytest.approx(64.0)
    # Spans from T0+3..T0+11 (9 x 0.5 s, in full) + 0.2 s clipped: 4.7 of 10 s.
    assert a["stepping_fraction"] == pytest.approx(0.47)
    assert a["wait_action_fraction"] == pytest.approx(9 * 0.25 / 10)  # T0+3.5 .. T0+11.5
    assert a["action_rtt_ms"]["p50"] == pytest.approx(20.0)
    assert i["batches_per_s"] == pytest.approx(1.0) and i["chunks_per_s"] == pytest.approx(4.0)
    assert i["fill_ratio"] == pytest.approx(0.5) and i["busy_fraction"] == pytest.approx(0.1)
    assert i["latency_ms"]["total"]["p50"] == pytest.approx(17.0)  # (11 + 23) / 2
    assert i["queue_depth_requests"]["max"] == 2
    assert L["samples_per_s"] == pytest.approx(3.2) and L["update_ms"]["p50"] == 1000
    assert L["wait_data_fraction"] == pytest.approx(0.2)
    assert L["policy_lag"]["histogram"] == {"0": 1, "1": 2} and L["policy_lag"]["max"] == 1
    assert w["broadcasts"] == 1 and w["bytes_per_broadcast"] == 1000
    assert w["inference_pause_ms"]["max"] == pytest.approx(2.0)
    assert r["links_bytes_per_s"]["actor->inference"] == pytest.approx(100.0)  # 2000 B / 20 s
    assert r["links_bytes_per_s"]["learner->inference (weights)"] == pytest.approx(1000 / 13)
    assert r["cpu"]["hosts"]["h"]["cores_used"] == pytest.approx(2 / 20 + 4 / 20 + 6 / 13)


def test_trace_is_chrome_json_with_every_role(hand_built):
    _, table = write_report(hand_built)
    trace = json.loads((hand_built / "trace.json").read_text())
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    assert names == {"actor-0", "inference-0", "learner"}
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {"env_step", "forward", "update", "broadcast"} <= {e["name"] for e in spans}
    first = min(spans, key=lambda e: e["ts"])
    assert first["ts"] == pytest.approx(1e6) and first["dur"] == pytest.approx(5e5)
    assert all(e["dur"] >= 0 and isinstance(e["pid"], int) for e in spans)
    assert "bottleneck:" in table and "env steps/s" in table
    assert json.loads((hand_built / "profile_report.json").read_text())["window_s"] > 0


def _report(**k):
    base = {"actors": {"blocked_by_learner_fraction": 0.0, "wait_action_fraction": 0.1,
                       "stepping_fraction": 0.5},
            "inference": {"busy_fraction": 0.5, "fill_ratio": 0.5,
                          "latency_ms": {"queue": {"p50": 1.0}, "total": {"p50": 10.0}},
                          "queue_depth_requests": {"p50": 0}},
            "learner": {"wait_data_fraction": 0.5}, "settings": META,
            "cpu": {"hosts": {"h": {"cores_used": 1.0, "cpus": 8}}, "roles": {"a": 1.0}}}
    for path, value in k.items():
        section, key = path.split("__")
        base[section][key] = value
    return base


@pytest.mark.parametrize("changes, stage, advice", [
    ({"actors__blocked_by_learner_fraction": 0.5, "learner__wait_data_fraction": 0.0},
     "learner", "speed up the learner"),
    ({"inference__busy_fraction": 0.95, "inference__fill_ratio": 1.0,
      "inference__queue_depth_requests": {"p50": 3}}, "inference", "raise inference.max_batch"),
    ({"inference__busy_fraction": 0.95}, "inference", "add inference servers"),
    ({"actors__stepping_fraction": 0.8}, "env", "add actor processes"),
    ({"actors__wait_action_fraction": 0.6}, "latency", "pipeline stages"),
    ({"actors__wait_action_fraction": 0.6,
      "inference__latency_ms": {"queue": {"p50": 8.0}, "total": {"p50": 10.0}}},
     "latency", "lower inference.max_wait_ms"),
    ({}, "balanced", "scale all"),
    ({"cpu__hosts": {"h": {"cores_used": 1.9, "cpus": 2}}}, "cpu", "more cores"),
])
def test_diagnosis_rules(changes, stage, advice):
    verdict = diagnose(_report(**changes))
    assert verdict["stage"] == stage and advice in verdict["advice"]


def test_no_profiles_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--profile"):
        load_profiles(tmp_path)


@pytest.mark.slow
def test_profile_run_reports_every_figure_and_agrees_with_the_run(tmp_path):
    result = launch(tmp_path, "configs/synthetic_grpo.yaml", "--profile", **{
        "profile.duration_s": 10, "profile.warmup_s": 2, "run.total_updates": 1})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = tmp_path / "run"
    assert "bottleneck:" in result.stdout and "what to change:" in result.stdout
    r = json.loads((run / "profile_report.json").read_text())
    a, i, L, w = r["actors"], r["inference"], r["learner"], r["weights"]
    assert r["roles"] == ["actor-0", "actor-1", "inference-0", "learner"]
    assert 5 <= r["window_s"] <= 10
    # Against the actors' own step counts over their acting time (a wider window).
    own = [json.loads((run / f"actor-{k}.json").read_text()) for k in (0, 1)]
    assert sum(o["env_steps"] / o["acting_s"] for o in own) == \
        pytest.approx(a["env_steps_per_s"], rel=0.5)
    # Every chunk a server answers is executed: N env steps for each (N = T = 8).
    assert i["chunks_per_s"] * 8 == pytest.approx(a["env_steps_per_s"], rel=0.25)
    for frac in ("stepping_fraction", "wait_action_fraction", "observe_fraction"):
        assert 0 <= a[frac] <= 1
    assert 0 < i["fill_ratio"] <= 1 and 0 < i["busy_fraction"] <= 1
    lat = i["latency_ms"]
    assert 0 <= lat["queue"]["p50"] and 0 < lat["compute"]["p50"] <= lat["total"]["p99"]
    assert i["queue_depth_requests"]["max"] >= 0
    assert L["samples_per_s"] > 0 and L["update_ms"]["p50"] > 0 and L["updates_per_s"] > 0
    assert sum(L["policy_lag"]["histogram"].values()) > 0 and L["policy_lag"]["max"] >= 0
    assert w["broadcasts"] >= 1 and w["broadcast_ms"]["p50"] > 0
    assert w["receive_ms"]["p50"] > 0 and w["inference_pause_ms"]["max"] >= 0
    assert w["bytes_per_broadcast"] > 0
    for link in ("actor->inference", "inference->actor", "actor->learner", "learner->actor",
                 "learner->inference (weights)"):
        assert r["links_bytes_per_s"][link] > 0, link
    assert r["bottleneck"]["stage"] in {"learner", "inference", "env", "latency",
                                        "balanced", "cpu"}
    trace = json.loads((run / "trace.json").read_text())
    assert {"env_step", "wait_action", "forward", "update", "broadcast", "weights_apply"} \
        <= {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    summary = json.loads((run / "learner_summary.json").read_text())
    assert summary["updates"] > 1  # a profiled run lasts its duration, not total_updates
