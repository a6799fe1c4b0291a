"""Evaluation and recording (``run.mode: eval`` / ``record``): the learner's place,
without training.

It sends the policy's weights (``model.checkpoint``, or fresh ones) to the inference
servers as version 0 (a scripted expert's recording has no servers and no policy),
receives every planned episode exactly once (the same acknowledged delivery as
training), and when every task x trial has arrived stops the actors and writes the
per-task success table as JSON and Markdown, and prints it (``eval_results`` or, for a
recording, ``record_results``: the expert's own success per task).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import zmq

from configs import Config, to_dict
from envs import planned_init_states
from envs.base import split_init_state
from learner.link import LearnerLinks
from models import build_policy, pick_device
from protocol.messages import Trajectory

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """One task's trials so far."""

    instruction: str = ""
    trials: int = 0
    successes: int = 0
    episode_steps: int = 0

    @property
    def success_rate(self) -> float:
        """Successes over trials (0 before any trial)."""
        return self.successes / max(self.trials, 1)


@dataclass
class EvalTable:
    """Success per task from episodes, each initial-state id counted once."""

    expected: set
    tasks: dict = field(default_factory=dict)
    seen: set = field(default_factory=set)
    env_errors: int = 0
    unexpected: int = 0

    def add(self, ep: Trajectory) -> None:
        """Count ``ep`` in its task's results; an initial state not expected, or seen
        before, only counts as ``unexpected``."""
        if ep.init_state_id not in self.expected or ep.init_state_id in self.seen:
            self.unexpected += 1
            return
        self.seen.add(ep.init_state_id)
        task = self.tasks.setdefault(split_init_state(ep.init_state_id)[0], TaskResult())
        task.instruction = ep.task_description
        task.trials += 1
        task.successes += int(ep.success_once)
        task.episode_steps += ep.env_steps
        self.env_errors += bool(ep.env_error)

    @property
    def complete(self) -> bool:
        """Whether every expected initial state has had its episode."""
        return self.seen == self.expected

    @property
    def mean_success(self) -> float:
        """Mean over tasks of each task's success rate (all tasks have equal trials)."""
        rates = [t.success_rate for t in self.tasks.values()]
        return sum(rates) / max(len(rates), 1)

    def to_json(self) -> dict:
        """The table as JSON: the mean success rate, counts, and a row per task."""
        return {
            "mean_success_rate": self.mean_success,
            "episodes": len(self.seen), "expected_episodes": len(self.expected),
            "complete": self.complete, "env_errors": self.env_errors,
            "tasks": [{"task_id": k, "instruction": t.instruction, "trials": t.trials,
                       "successes": t.successes, "success_rate": t.success_rate,
                       "mean_episode_steps": t.episode_steps / max(t.trials, 1)}
                      for k, t in sorted(self.tasks.items())]}

    def to_markdown(self, title: str) -> str:
        """The table in Markdown under the heading ``title``, with a mean row (and a note when
        it is incomplete)."""
        lines = [f"# {title}", "", "| task | instruction | successes | trials | success |",
                 "|---:|---|---:|---:|---:|"]
        for k, t in sorted(self.tasks.items()):
            lines.append(f"| {k} | {t.instruction} | {t.successes} | {t.trials} | "
                         f"{100 * t.success_rate:.1f}% |")
        lines += [f"| **mean** | | {sum(t.successes for t in self.tasks.values())} | "
                  f"{len(self.seen)} | **{100 * self.mean_success:.1f}%** |"]
        if not self.complete:
            lines += ["", f"Incomplete: {len(self.seen)} of {len(self.expected)} episodes."]
        return "\n".join(lines) + "\n"


def run(cfg: Config, ctx: zmq.Context | None = None, weights=None,
        stop: threading.Event | None = None) -> int:
    """Evaluate every task x trial once; returns 0 when the table is complete."""
    stop = stop or threading.Event()
    device = pick_device(cfg.learner.device)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.model).to(device) if cfg.inference_needed else None
    log_dir = Path(cfg.run.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    table = EvalTable(set(planned_init_states(cfg)))
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    links = LearnerLinks(cfg, ctx, "evaluator", device, weights=weights)
    try:
        if policy is not None:
            links.weights.send(0, policy)
        acting = "the scripted expert" if policy is None else \
            f"weights from {cfg.model.checkpoint or 'a fresh policy'}"
        log.info("%s %d episodes (%s, %d tasks), %s", cfg.run.mode, len(table.expected),
                 cfg.env.kind, len({split_init_state(i)[0] for i in table.expected}), acting)
        _collect(cfg, table, links, policy, stop)
        return 0 if table.complete else 1
    finally:
        links.finish(f"{cfg.run.mode} finished" if table.complete else "stopped")
        _write_results(cfg, table)
        links.close()
        if own_ctx:
            ctx.term()


def _collect(cfg: Config, table: EvalTable, links: LearnerLinks, policy, stop) -> None:
    shown = time.monotonic()
    while not table.complete and not stop.is_set():
        links.check()
        if policy is not None:
            links.admit(0, policy)
        try:
            group = links.ready.get(timeout=0.2)
        except queue.Empty:
            continue
        for ep in group:
            table.add(ep)
        if time.monotonic() - shown >= cfg.run.progress_every_s or table.complete:
            shown = time.monotonic()
            log.info("%s %d/%d episodes | mean success so far %.3f", cfg.run.mode,
                     len(table.seen), len(table.expected), table.mean_success)


def _write_results(cfg: Config, table: EvalTable) -> None:
    log_dir = Path(cfg.run.log_dir)
    env = cfg.env.libero.suite if cfg.env.kind == "libero" else \
        (cfg.env.robosuite.task if cfg.env.kind == "robosuite" else cfg.env.kind)
    if cfg.run.mode == "record":
        name = "record_results"
        r = cfg.record
        who = "scripted expert" if r.source == "expert" else \
            f"policy ({'deterministic' if cfg.actor.deterministic else 'sampled'})"
        title = (f"{env} recording: {r.episodes_per_task} episodes per task from state "
                 f"{r.first_state}, {who}, action noise {r.action_noise}")
    else:
        name = cfg.eval.results_name
        title = (f"{env} evaluation: {cfg.eval.num_trials} trials per task"
                 f"{f' from state {cfg.eval.first_state}' if cfg.eval.first_state else ''}, "
                 f"{'deterministic' if cfg.actor.deterministic else 'sampled'} actions")
    results = dict(table.to_json(), title=title, checkpoint=cfg.model.checkpoint,
                   config=to_dict(cfg))
    (log_dir / f"{name}.json").write_text(json.dumps(results, indent=1))
    markdown = table.to_markdown(title)
    (log_dir / f"{name}.md").write_text(markdown)
    log.info("%s results in %s\n%s", cfg.run.mode, log_dir / f"{name}.md", markdown)
