"""The profile report as a terminal table (stage, figure, value), bottleneck last."""

from __future__ import annotations


def _n(x, fmt: str = ",.1f", unit: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{unit}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def _pair(d: dict, a: str = "p50", b: str = "p99") -> str:
    return f"{_n(d.get(a), '.2f')} / {_n(d.get(b), '.2f')}"


def _bytes(rate: float) -> str:
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if rate >= size:
            return f"{rate / size:.1f} {unit}"
    return f"{rate:.0f} B/s"


def rows(report: dict) -> list[tuple[str, str, str]]:
    """(stage, figure, value) lines of the table."""
    a, i, L, w = report["actors"], report["inference"], report["learner"], report["weights"]
    lat = i["latency_ms"]
    out = [
        (f"actors ({a['count']})", "env steps/s", _n(a["env_steps_per_s"], ",.0f")),
        ("", "chunk step time p50 / p99 (ms)", _pair(a["chunk_step_ms"])),
        ("", "render + send a request p50 / p99 (ms)", _pair(a["observe_send_ms"])),
        ("", "time per env step (ms)", _n(a["ms_per_env_step"], ".3f")),
        ("", "stepping / rendering+sending", f"{_pct(a['stepping_fraction'])} / "
                                             f"{_pct(a['observe_fraction'])}"),
        ("", "waiting for actions (idle)", _pct(a["wait_action_fraction"])),
        ("", "held back by the learner", _pct(a["blocked_by_learner_fraction"])),
        ("", "action round trip p50 / p99 (ms)", _pair(a["action_rtt_ms"])),
        (f"inference ({i['count']})", "chunks/s, batches/s",
         f"{_n(i['chunks_per_s'], ',.0f')}, {_n(i['batches_per_s'], ',.1f')}"),
        ("", f"batch fill (of max_batch {i['max_batch']})",
         f"{_pct(i['fill_ratio'])} (mean {_n(i['batch_rows'].get('mean'))} rows)"),
        ("", "latency p50 / p99 (ms): queueing", _pair(lat["queue"])),
        ("", "                        compute", _pair(lat["compute"])),
        ("", "                        total", _pair(lat["total"])),
        ("", "request queue depth p50 / p99 / max",
         f"{_pair(i['queue_depth_requests'])} / {_n(i['queue_depth_requests'].get('max'), '.0f')}"),
        ("", "busy (computing)", _pct(i["busy_fraction"])),
    ]
    if L:
        lag = L["policy_lag"]
        out += [
            ("learner", "samples/s, updates/s",
             f"{_n(L['samples_per_s'], ',.0f')}, {_n(L['updates_per_s'], ',.2f')}"),
            ("", "update time p50 / p99 (ms)", _pair(L["update_ms"])),
            ("", "busy / waiting for data", f"{_pct(L['busy_fraction'])} / "
                                            f"{_pct(L['wait_data_fraction'])}"),
            ("policy lag", "mean / p50 / p90 / max (versions)",
             f"{_n(lag['mean'], '.2f')} / {_n(lag.get('p50'), '.0f')} / "
             f"{_n(lag.get('p90'), '.0f')} / {_n(lag['max'], '.0f')}"),
        ]
    out += [
        ("weights", f"broadcasts ({_n(w['bytes_per_broadcast'], ',.0f')} B each) p50 / max ms",
         _pair(w["broadcast_ms"], "p50", "max")),
        ("", "server receive p50 / max (ms)", _pair(w["receive_ms"], "p50", "max")),
        ("", "inference pause p50 / max (ms)", _pair(w["inference_pause_ms"], "p50", "max")),
    ]
    for k, (link, rate) in enumerate(report["links_bytes_per_s"].items()):
        out.append(("links" if k == 0 else "", link, _bytes(rate)))
    cpu = report.get("cpu", {})
    for k, (host, h) in enumerate(cpu.get("hosts", {}).items()):
        top = sorted(cpu["roles"].items(), key=lambda kv: -kv[1])
        roles = ", ".join(f"{r} {c:.2f}" for r, c in top[:4]) + \
            (f", +{len(top) - 4} more" if len(top) > 4 else "")
        out.append(("cpu" if k == 0 else "", f"cores used on {host} (of {h['cpus']})",
                    f"{h['cores_used']:.2f} ({roles})"))
    return out


def render(report: dict) -> str:
    """The table, then the bottleneck and what to change."""
    lines = rows(report)
    w0 = max(len(r[0]) for r in lines)
    w1 = max(len(r[1]) for r in lines)
    text = [f"profile: {report['window_s']:.1f} s steady window "
            f"(after {report['warmup_s']:.0f} s warm-up), roles {', '.join(report['roles'])}"]
    text += [f"{s:<{w0}}  {f:<{w1}}  {v}" for s, f, v in lines]
    b = report["bottleneck"]
    text += ["", f"bottleneck: {b['stage']}: {b['reason']}", f"what to change: {b['advice']}"]
    if report["dropped_events"]:
        text.append(f"({report['dropped_events']} events beyond profile.max_events dropped)")
    return "\n".join(text)
