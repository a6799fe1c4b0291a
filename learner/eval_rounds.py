"""Evaluation during training: rounds of the evaluation trials, run by actors set aside.

Before the first update, every ``eval.every_updates`` updates, and after the last, the
learner orders a round (:class:`~protocol.messages.EvalRound`): the evaluation actors
(indices from ``actor.num_actors``) run every task x trial once, deterministically, from
the same initial states as ``run.mode: eval`` (trial k from state k), with weights of at
least the round's version. With ``eval.pause_training`` (the default) the learner makes
no update while a round runs, so the round measures exactly those weights; otherwise
training goes on and a round's later chunks may be acted by newer weights
(``eval/policy_version_spread`` says by how many versions). The last round runs after
training stopped. Results go to TensorBoard (``eval/success``,
``eval/success_task<k>``, ``eval/episode_len``) at the round's version and to
``log_dir/eval_rounds.jsonl`` (one line per round: the table, the version, the training
env steps and the wall time when it was ordered).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from configs import Config
from envs import eval_init_states
from learner.evaluator import EvalTable
from protocol.ids import actor_of
from protocol.messages import EvalRound, Trajectory

log = logging.getLogger(__name__)
ROUNDS_FILE = "eval_rounds.jsonl"


class EvalRounds:
    """When rounds are due, their tables, and where their results go."""

    def __init__(self, cfg: Config, receiver, writer, log_dir: Path):
        trials = cfg.eval.trials_during_training or cfg.eval.num_trials
        self.expected = set(eval_init_states(cfg.env, trials, cfg.eval.first_state))
        self.every = cfg.eval.every_updates
        self.actors = list(range(cfg.actor.num_actors, cfg.total_actors))
        self.receiver, self.writer, self.path = receiver, writer, log_dir / ROUNDS_FILE
        self.round = -1
        self.table: EvalTable | None = None  # the running round's
        self.version = -1  # of the last round ordered
        self.done_version = -1  # of the last round completed
        self.versions: list[int] = []
        self.ordered_at = 0.0
        self.ordered_env_steps = 0

    @property
    def running(self) -> bool:
        """Whether a round is in progress (ordered and not yet complete)."""
        return self.table is not None

    def owns(self, group: list[Trajectory]) -> bool:
        """Whether ``group`` comes from an evaluation actor."""
        return actor_of(group[0].episode_id)[0] in self.actors

    def finished_at(self, version: int) -> bool:
        """A round of the weights of ``version`` has completed."""
        return self.done_version == version and not self.running

    def tick(self, version: int, env_steps: int, final: bool = False) -> None:
        """Order a round when one is due: none yet, ``every`` updates since the last, or
        ``final`` (training has stopped) at a version not evaluated yet."""
        if self.running:
            return
        due = (self.version < 0 or version >= self.version + self.every or
               (final and version != self.done_version))
        if not due:
            return
        self.round += 1
        self.version, self.table, self.versions = version, EvalTable(set(self.expected)), []
        self.ordered_at, self.ordered_env_steps = time.time(), env_steps
        self.receiver.order(self.actors, EvalRound(self.round, version))
        log.info("evaluation round %d ordered at version %d (%d episodes)", self.round,
                 version, len(self.expected))

    def add(self, group: list[Trajectory]) -> None:
        """Count an evaluation actor's episodes; report the round once it is complete."""
        if not self.running:
            return  # a late resend of a finished round
        for ep in group:
            self.table.add(ep)
            self.versions += [int(ep.policy_versions.min()), int(ep.policy_versions.max())]
        if self.table.complete:
            self._report()

    def _report(self) -> None:
        table, version = self.table, self.version
        spread = max(self.versions) - min(self.versions) if self.versions else 0
        scalars = {"eval/success": table.mean_success,
                   "eval/episode_len": sum(t.episode_steps for t in table.tasks.values()) /
                   max(len(table.seen), 1),
                   "eval/policy_version_spread": spread,
                   "eval/round_s": time.time() - self.ordered_at}
        for k, task in sorted(table.tasks.items()):
            scalars[f"eval/success_task{k}"] = task.success_rate
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, version)
        self.writer.flush()
        record = dict(table.to_json(), round=self.round, policy_version=version,
                      policy_version_spread=spread, env_steps=self.ordered_env_steps,
                      ordered_at=self.ordered_at, finished_at=time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("evaluation round %d (version %d): success %.3f over %d episodes (%s)",
                 self.round, version, table.mean_success, len(table.seen),
                 ", ".join(f"task {k} {t.success_rate:.2f}"
                           for k, t in sorted(table.tasks.items())))
        self.table, self.done_version = None, version
