"""``dataset_statistics.json`` in OpenVLA's (and StarVLA's) layout, computed from demos.

    {unnorm_key: {"action": {"mean", "std", "min", "max", "q01", "q99", "mask"},
                  "proprio": {... the same, no mask},
                  "num_transitions": N, "num_trajectories": M}}

``mask`` is false on the last action dimension (the gripper, which VLAs emit in [0, 1]
and never normalise), true elsewhere, as OpenVLA's statistics have it. The file is what
``models.action_norm.ActionNorm.from_statistics`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def summary(values: np.ndarray) -> dict:
    """Per-dimension mean, std, min, max, 1st and 99th percentile of [N,D] values."""
    v = np.asarray(values, np.float64)
    return {"mean": v.mean(0).tolist(), "std": v.std(0).tolist(), "min": v.min(0).tolist(),
            "max": v.max(0).tolist(), "q01": np.quantile(v, 0.01, axis=0).tolist(),
            "q99": np.quantile(v, 0.99, axis=0).tolist()}


def dataset_statistics(actions: list[np.ndarray], states: list[np.ndarray],
                       unnorm_key: str) -> dict:
    """The statistics of per-episode ``actions`` [T,D] and ``states`` [T,S]."""
    all_actions = np.concatenate(actions)
    action = summary(all_actions)
    action["mask"] = [True] * (all_actions.shape[1] - 1) + [False]
    return {unnorm_key: {"action": action, "proprio": summary(np.concatenate(states)),
                         "num_transitions": int(len(all_actions)),
                         "num_trajectories": len(actions)}}


def write_statistics(path: Path, stats: dict) -> Path:
    """Write ``stats`` to ``path`` as JSON; returns ``path``."""
    path.write_text(json.dumps(stats, indent=1))
    return path
