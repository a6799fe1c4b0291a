"""The learner's checkpoint: everything a resumed run needs, written atomically.

``log_dir/checkpoint.pt`` holds the weights, the optimizer and schedule, the policy
version, the RNG states, the counters and the ids of every episode received; beside it
``checkpoint.json`` says which version and incarnation it is, so the launcher can resume
without loading the weights. Both are written to a temporary file and renamed into
place, so a kill at any moment leaves the previous checkpoint whole; the .json is
renamed last, so it never names a checkpoint that is not complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
META = "checkpoint.json"
KEPT = "checkpoints"  # log_dir/checkpoints/update-NNNNNN.pt: learner.keep_checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not of this run."""


@dataclass(frozen=True)
class ResumeState:
    """What a resumed learner restores: counters (``stale_dropped``...), the ids of
    episodes received (``received``) and trained (``trained``) as id ranges."""

    version: int
    incarnation: int
    counters: dict
    received: list
    trained: list


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_states(generator) -> dict:
    """Every random state a resumed learner continues: torch (CPU and each CUDA device),
    the learner's own generator, numpy's global one and Python's. Tensors and plain
    numbers only, so ``torch.load(weights_only=True)`` reads them."""
    import random

    import numpy as np
    import torch
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "learner": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_states(rng: dict, generator) -> None:
    """Restore what :func:`rng_states` saved (a checkpoint without numpy, Python or CUDA
    states, from before they were saved, leaves those as they are)."""
    import random

    import numpy as np
    import torch
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["learner"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "numpy" in rng:
        n = rng["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
    if "python" in rng:
        random.setstate(rng["python"])


def save(log_dir: Path, learner, incarnation: int, counters: dict, received, trained,
         config: dict, keep: bool = False) -> Path:
    """Write the learner's state to ``log_dir/checkpoint.pt`` (+ .json), atomically; with
    ``keep``, also as ``log_dir/checkpoints/update-NNNNNN.pt`` (:func:`keep_version`)."""
    model, optimizer = learner.full_state()  # sharded: gathered from every rank
    state = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": learner.scheduler.state_dict(),
        "version": learner.version,
        "incarnation": incarnation,
        "rng": rng_states(learner.generator),
        "counters": dict(counters),
        "received": received.ranges(),
        "trained": trained.ranges(),
        "config": config,
    }
    return save_state(log_dir, state, {"version": learner.version, "incarnation": incarnation,
                                       "episodes_received": len(received)}, keep)


def keep_version(log_dir: Path, version: int) -> Path:
    """Keep the checkpoint just written as ``log_dir/checkpoints/update-NNNNNN.pt``: a hard
    link (the next save replaces ``checkpoint.pt`` by a new file, so the link keeps these
    bytes), or a copy where the file system has no links."""
    import shutil
    src = Path(log_dir) / CHECKPOINT
    dst = Path(log_dir) / KEPT / f"update-{version:06d}.pt"
    dst.parent.mkdir(exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def save_state(log_dir: Path, state: dict, meta: dict, keep: bool = False) -> Path:
    """Write ``state`` to ``log_dir/checkpoint.pt`` and ``meta`` (with ``version`` and
    ``incarnation``) to ``checkpoint.json``, each atomically, the .json last (after the
    kept copy too, with ``keep``: a .json names only checkpoints already kept)."""
    import torch
    path = Path(log_dir) / CHECKPOINT
    _write_atomically(path, lambda f: torch.save(state, f))
    if keep:
        keep_version(log_dir, meta["version"])
    meta = dict(meta, file=CHECKPOINT, saved_at=time.time())
    _write_atomically(Path(log_dir) / META, lambda f: f.write(json.dumps(meta).encode()))
    return path


def read_meta(log_dir: Path) -> dict:
    """The run's checkpoint.json; a missing or corrupt one fails naming the file."""
    path = Path(log_dir) / META
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist (the run saved no "
                              "checkpoint; set learner.checkpoint_every to save during a run)")
    try:
        meta = json.loads(path.read_text())
        return {"version": int(meta["version"]), "incarnation": int(meta["incarnation"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot resume: {path} is corrupt ({exc}); restore it or "
                              "start a new run") from exc


def restore(log_dir: Path, learner) -> ResumeState:
    """Load ``log_dir/checkpoint.pt`` into ``learner`` (weights, optimizer, schedule,
    version, RNG); a missing, corrupt or mismatched file fails naming it."""
    import torch
    path = Path(log_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        learner.policy.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"], learner.generator)
        learner.version = int(state["version"])
        return ResumeState(learner.version, int(state["incarnation"]), state["counters"],
                           state["received"], state["trained"])
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"cannot resume from {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''} (is it a "
                              "chunkrl checkpoint of this config?)") from exc
