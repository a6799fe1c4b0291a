"""Which GPUs each role process of this host sees: the placement plan.

The supervisor starts every child with ``CUDA_VISIBLE_DEVICES`` set to the GPUs the plan
gives its slot (``""``, none, for a role on the CPU), so a role's ``cuda`` device is its
own GPU and two roles never meet on ``cuda:0`` by accident. The plan is computed here,
from the config and this host's visible GPUs, without CUDA; ``launch.py`` prints it at
start-up.

Automatic placement (``placement.learner`` / ``placement.inference`` empty), G GPUs,
S servers on this host:

- the learner takes GPU 0 (rank r of a data-parallel learner, ``learner.num_ranks``,
  GPU r: one each);
- the servers take the other GPUs, server i the (i mod (G-R))-th of them; with no other
  GPU they share the learner's (one GPU: every role shares it, and learner and server
  exchange weights through CUDA IPC with a gloo group beside it there,
  ``links.weights.form_link``); on a host without the learner (``--role inference``),
  server i takes GPU i mod G;
- actors get no GPU, unless their env runs a model on CUDA (``env.kind: world_model`` with
  ``env.world_model.device`` not ``cpu``): then actor k shares the servers' GPUs,
  round robin;
- a role whose device is ``cpu`` (``learner.device``, ``inference.device``) gets none.

A plan is refused (:class:`PlacementError`, one line naming the fix) when it names a GPU
this host does not have, gives a wrong number of servers' GPUs, or puts the learner and a
server on one GPU with ``network.weights_backend: nccl``: NCCL refuses two ranks of one
group on one GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

CPU = ()  # a slot's GPUs when it runs on the CPU


class PlacementError(ValueError):
    """A placement this host cannot run; the message names the key to change."""


def visible_gpus(environ=os.environ) -> list[str]:
    """This host's GPUs as ``CUDA_VISIBLE_DEVICES`` names them: the launcher's own
    ``CUDA_VISIBLE_DEVICES`` when set (its entries, so a child's list is a subset of the
    launcher's), else ``0..n-1`` for the n GPUs ``nvidia-smi -L`` lists, else none."""
    own = environ.get("CUDA_VISIBLE_DEVICES")
    if own is not None:
        return [d.strip() for d in own.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    listed = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return [str(i) for i in range(len(listed))]


@dataclass(frozen=True)
class Plan:
    """Per slot name (``learner-0``, ``inference-1``, ``actor-3``) the indices of the
    host's GPUs it sees; ``gpus`` are those GPUs' names (``CUDA_VISIBLE_DEVICES``
    entries)."""

    gpus: tuple[str, ...]
    slots: dict[str, tuple[int, ...]]

    def visible_devices(self, slot: str) -> str:
        """The slot's ``CUDA_VISIBLE_DEVICES`` value ("" for the CPU)."""
        return ",".join(self.gpus[i] for i in self.slots[slot])

    def describe(self) -> str:
        """One line per GPU with its roles, then the CPU-only roles."""
        if not self.gpus:
            return "placement: no GPU on this host, every role on the CPU"
        lines = [f"placement over {len(self.gpus)} GPU(s) "
                 f"(CUDA_VISIBLE_DEVICES {','.join(self.gpus)}):"]
        for i, name in enumerate(self.gpus):
            roles = [s for s, g in self.slots.items() if i in g]
            lines.append(f"  GPU {name}: {', '.join(roles) if roles else '(unused)'}")
        cpu = [s for s, g in self.slots.items() if not g]
        if cpu:
            lines.append(f"  CPU only: {_compact(cpu)}")
        return "\n".join(lines)


def _compact(names: list[str]) -> str:
    """``actor-0..actor-7`` for a run of actors; other names as they are."""
    actors = [n for n in names if n.startswith("actor-")]
    rest = [n for n in names if not n.startswith("actor-")]
    if len(actors) > 2:
        rest.append(f"{actors[0]}..{actors[-1]} ({len(actors)} actors)")
    else:
        rest += actors
    return ", ".join(rest)


def make_plan(cfg, slots: list[tuple[str, int]], gpus: list[str]) -> Plan:
    """The plan for this host's ``slots`` (role, index) over its ``gpus``."""
    p, n = cfg.placement, len(gpus)
    for key, given in (("placement.learner", p.learner), ("placement.inference", p.inference)):
        bad = [g for g in given if not 0 <= g < n]
        if bad:
            raise PlacementError(f"{key}={list(given)} names GPU {bad[0]}, but this host has "
                                 f"{n} (indices 0..{n - 1}): "
                                 f"{'give indices below ' + str(n) if n else 'leave it empty'}")
    if p.inference and len(p.inference) != cfg.inference.num_servers:
        raise PlacementError(f"placement.inference has {len(p.inference)} GPU(s) for "
                             f"{cfg.inference.num_servers} inference servers: give one per "
                             "server (inference.num_servers), or leave it empty for auto")
    for role, device in (("learner", cfg.learner.device), ("inference", cfg.inference.device)):
        if device == "cuda" and not n and any(r == role for r, _ in slots):
            raise PlacementError(f"{role}.device=cuda, but this host has no GPU (none in "
                                 "CUDA_VISIBLE_DEVICES or nvidia-smi -L): set "
                                 f"{role}.device=auto or cpu")
    # the learner ranks on this host (all R on one host; one per host with --role learner)
    local = sorted(i for role, i in slots if role == "learner")
    on_gpu = cfg.learner.device != "cpu" and n > 0
    if on_gpu and not p.learner and len(local) > n:
        raise PlacementError(f"{len(local)} learner ranks (learner.num_ranks) need a GPU each, "
                             f"but this host has {n}: set learner.num_ranks={n}, or "
                             "learner.device=cpu")
    rank_gpu = {r: (p.learner[r] if p.learner else k) for k, r in enumerate(local)}
    learner = tuple(rank_gpu.values()) if on_gpu else CPU
    if len(set(learner)) < len(learner):
        raise PlacementError(f"placement.learner={list(p.learner)} puts two learner ranks on "
                             "one GPU, which NCCL refuses: give each rank its own")
    # the learner's GPUs are kept for it only where it runs (one host, or the learner's)
    others = [g for g in range(n) if g not in learner] or list(learner or range(n))
    out: dict[str, tuple[int, ...]] = {}
    for role, index in slots:
        if role == "learner":
            got = (rank_gpu[index],) if on_gpu else CPU
        elif role == "inference":
            got = (p.inference[index],) if p.inference else \
                ((others[index % len(others)],) if others else CPU)
            got = got if cfg.inference.device != "cpu" else CPU
        else:
            wm = cfg.env.kind == "world_model" and cfg.env.world_model.device != "cpu"
            got = (others[index % len(others)],) if wm and others else CPU
        out[f"{role}-{index}"] = got
    plan = Plan(tuple(gpus), out)
    _refuse_nccl_on_one_gpu(cfg, plan)
    return plan


def _refuse_nccl_on_one_gpu(cfg, plan: Plan) -> None:
    if cfg.network.weights_backend != "nccl":
        return
    shared = set(plan.slots.get("learner-0", CPU))
    for slot, gpus in plan.slots.items():
        if slot.startswith("inference-") and shared & set(gpus):
            raise PlacementError(
                f"the plan puts learner-0 and {slot} on GPU {plan.gpus[min(shared & set(gpus))]}"
                " with network.weights_backend=nccl, and NCCL refuses two ranks of one group "
                "on one GPU: set network.weights_backend=auto (gloo there) or give the "
                "servers other GPUs (placement.inference)")
