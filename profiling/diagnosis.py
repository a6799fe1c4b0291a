"""Which stage limits a profiled run, and what to change (pure: report dict in, verdict out).

The pipeline has three stages that should overlap: actors stepping envs, inference
servers answering with chunks, the learner training. Read off the report:

* **learner**: actors spend > 20% of their time held back by unacknowledged episodes
  (the learner's queue is full) while the learner seldom waits for data (< 10%).
* **inference**: the servers compute > 85% of the time. Full batches (fill >= 90%) with
  requests left waiting want more servers, or a larger ``max_batch`` if the device has
  headroom; part-full batches want more servers.
* **env**: actors step (and render) > 70% of the time and wait for actions < 20%: more actor
  processes (while cores remain) or cheaper envs (``env.fast_render``).
* **latency**: actors wait for actions > 30% of the time while the servers are not
  busy: too few requests in flight. More pipeline stages or envs per actor; a shorter
  ``max_wait_ms`` when queueing is most of the latency.
* otherwise **balanced**: no stage waits much for another.

First of all, **cpu**: when the roles on one host keep >= 90% of its cores busy, they
compete for cores and every stage slows the others; the figures above then say more
about the host than about the pipeline.
"""

from __future__ import annotations


def _f(x) -> float:
    return 0.0 if x is None else float(x)


def diagnose(report: dict) -> dict:
    """{"stage", "reason", "advice"} for ``report`` (:func:`profiling.report.build_report`)."""
    a, i, L = report["actors"], report["inference"], report["learner"]
    settings = report.get("settings", {})
    blocked, waiting = _f(a.get("blocked_by_learner_fraction")), \
        _f(a.get("wait_action_fraction"))
    # The env side of an actor: stepping, and rendering + sending the next request.
    stepping = _f(a.get("stepping_fraction")) + _f(a.get("observe_fraction"))
    busy = _f(i.get("busy_fraction"))
    fill, data_wait = _f(i.get("fill_ratio")), _f(L.get("wait_data_fraction"))
    queue = i.get("latency_ms", {}).get("queue", {}).get("p50")
    total = i.get("latency_ms", {}).get("total", {}).get("p50")
    depth = _f(i.get("queue_depth_requests", {}).get("p50"))
    for host, h in report.get("cpu", {}).get("hosts", {}).items():
        if h.get("cpus") and h["cores_used"] >= 0.9 * h["cpus"]:
            busiest = max(report["cpu"]["roles"].items(), key=lambda kv: kv[1])
            return {"stage": "cpu",
                    "reason": f"the roles on {host} keep {h['cores_used']:.2f} of its "
                              f"{h['cpus']} cores busy (most: {busiest[0]}, "
                              f"{busiest[1]:.2f}); the stages compete for cores",
                    "advice": "give the roles more cores: move the learner and inference "
                              "servers to a GPU or to other hosts (--role), or run fewer "
                              "actor processes on this one"}
    if blocked > 0.2 and data_wait < 0.1:
        return {"stage": "learner",
                "reason": f"actors are held back {blocked:.0%} of the time by unacknowledged "
                          f"episodes; the learner waits for data only {data_wait:.0%}",
                "advice": "speed up the learner (a GPU, learner.bf16, a larger "
                          "learner.micro_batch_size, fewer learner.update_epochs) or let "
                          "actors run further ahead (actor.max_unacked_episodes, "
                          "learner.max_ready_groups)"}
    if busy > 0.85:
        if fill >= 0.9 and depth >= 1:
            advice = ("add inference servers "
                      f"(inference.num_servers={settings.get('num_servers')}) or raise "
                      f"inference.max_batch (now {settings.get('max_batch')}; batches "
                      "are full and requests wait) if the device has headroom")
        else:
            advice = ("add inference servers (inference.num_servers="
                      f"{settings.get('num_servers')}) or give them a faster device")
        return {"stage": "inference",
                "reason": f"the servers compute {busy:.0%} of the time (batches "
                          f"{fill:.0%} full)",
                "advice": advice}
    if stepping > 0.7 and waiting < 0.2:
        return {"stage": "env",
                "reason": f"actors step and render envs {stepping:.0%} of the time and wait for "
                          f"actions {waiting:.0%}; the servers are busy {busy:.0%}",
                "advice": f"add actor processes (actor.num_actors="
                          f"{settings.get('num_actors')}) while CPU cores remain, or make "
                          "envs cheaper (env.fast_render for simulators)"}
    if waiting > 0.3:
        advice = (f"keep more requests in flight: more pipeline stages (actor.pipeline_stages="
                  f"{settings.get('pipeline_stages')}) or envs per actor "
                  f"(actor.envs_per_actor={settings.get('envs_per_actor')})")
        if queue is not None and total and queue / total > 0.5:
            advice += (f"; queueing is {queue / total:.0%} of the latency: lower "
                       f"inference.max_wait_ms (now {settings.get('max_wait_ms')})")
        return {"stage": "latency",
                "reason": f"actors wait for actions {waiting:.0%} of the time while the "
                          f"servers are busy only {busy:.0%}",
                "advice": advice}
    return {"stage": "balanced",
            "reason": f"actors step and render {stepping:.0%} and wait {waiting:.0%}; servers busy "
                      f"{busy:.0%}; learner waits for data {data_wait:.0%}",
            "advice": "no stage holds the others back much; scale all of them together"}
