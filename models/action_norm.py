"""Action normalisation with dataset statistics, as VLA checkpoints publish them.

A VLA predicts actions in [-1, 1]; ``dataset_statistics.json`` holds, per dataset key
(``unnorm_key``), the action statistics of its training data::

    {"libero_spatial_no_noops": {"action": {"q01": [...], "q99": [...], "min": [...],
                                            "max": [...], "mask": [true, ..., false]}}}

Un-normalising maps ``a`` in [-1, 1] to ``0.5 * (a + 1) * (high - low) + low`` on the
dimensions where ``mask`` is true (``low, high`` = q01/q99, or min/max); masked-out
dimensions (the gripper, usually) pass through. ``binarize_gripper`` thresholds the last
dimension at 0.5 to {0, 1}, as StarVLA's LIBERO evaluation does; the env's
``gripper_convention`` then maps it to the simulator's -1/+1.

The inverse, :meth:`ActionNorm.to_policy`, brings env-unit actions back to the policy's
space, where log-probs are taken: the inference server scores the *projected* sample
``to_policy(to_env(a))``, and the learner recomputes on ``to_policy`` of the stored env
actions, so both score the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

STAT_KINDS = ("q01q99", "minmax")


@dataclass(frozen=True)
class ActionNorm:
    """Per-dimension bounds [D] and mask [D]; ``None`` bounds mean identity."""

    low: Optional[torch.Tensor] = None
    high: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    binarize_gripper: bool = False

    @classmethod
    def from_statistics(cls, path: Path, unnorm_key: str, kind: str = "q01q99",
                        binarize_gripper: bool = False) -> "ActionNorm":
        """Read ``path`` (a dataset_statistics.json); errors name the file and the keys."""
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the checkpoint needs its "
                                    "dataset_statistics.json to un-normalise actions")
        return cls.from_stats(json.loads(path.read_text()), str(path), unnorm_key, kind,
                              binarize_gripper)

    @classmethod
    def from_stats(cls, stats: dict, path: str, unnorm_key: str, kind: str = "q01q99",
                   binarize_gripper: bool = False) -> "ActionNorm":
        """The statistics of ``unnorm_key`` in ``stats`` (read from ``path``)."""
        if kind not in STAT_KINDS:
            raise ValueError(f"unknown action statistics {kind!r}; valid: {list(STAT_KINDS)}")
        key = unnorm_key
        if key not in stats and f"{key}_no_noops" in stats:
            key = f"{key}_no_noops"  # OpenVLA's LIBERO keys carry this suffix
        if key not in stats:
            raise ValueError(f"model.unnorm_key {unnorm_key!r} is not in {path}; it has: "
                             f"{sorted(stats)}")
        entry = stats[key]
        # {key: {"action": ...}} (OpenVLA, StarVLA), {key: {"abs": {"action": ...}}} (newer
        # StarVLA), or the statistics themselves under the key.
        entry = entry.get("abs", entry) if isinstance(entry, dict) else {}
        action = entry.get("action", entry)
        if not isinstance(action, dict):
            raise ValueError(f"{path}: {key} holds no action statistics")
        lo, hi = ("q01", "q99") if kind == "q01q99" else ("min", "max")
        missing = [k for k in (lo, hi) if k not in action]
        if missing:
            raise ValueError(f"{path}: {key}.action has no {missing}; it has {sorted(action)}")
        low = torch.tensor(action[lo], dtype=torch.float32)
        high = torch.tensor(action[hi], dtype=torch.float32)
        mask = torch.tensor(action.get("mask", [True] * len(low)), dtype=torch.bool)
        return cls(low, high, mask, binarize_gripper)

    @property
    def dim(self) -> Optional[int]:
        """The number of action dimensions, or None for the identity."""
        return None if self.low is None else len(self.low)

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        """Policy-space actions [..., D] -> env units."""
        if self.low is None:
            return a
        a = a.clamp(-1.0, 1.0)
        if self.binarize_gripper:
            a = torch.cat([a[..., :-1], (a[..., -1:] >= 0.5).to(a.dtype)], dim=-1)
        low, high, mask = (t.to(a.device) for t in (self.low, self.high, self.mask))
        return torch.where(mask, 0.5 * (a + 1.0) * (high - low) + low, a)

    def to_policy(self, x: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [..., D] -> the policy's space (the inverse on masked dims)."""
        if self.low is None:
            return x
        low, high, mask = (t.to(x.device) for t in (self.low, self.high, self.mask))
        span = (high - low).clamp_min(1e-8)
        return torch.where(mask, 2.0 * (x - low) / span - 1.0, x)
