"""FSDP2 for a data-parallel learner (``learner.sharding: fsdp``).

Each of the ``learner.num_ranks`` ranks holds 1/world of every parameter, gradient and
Adam moment (``torch.distributed.fsdp.fully_shard``): a transformers model's layers (the
classes its ``_no_split_modules`` names) are units of their own, the rest of the policy
one more, so a forward gathers one layer at a time. The update is
:mod:`learner.data_parallel`'s: rank r computes micro-batches r, r + world, ... of each
mini-batch, the gradients are *summed* over the ranks (the losses are already normalised
by the mini-batch's global counts), so one update equals one rank's update (0-dim
parameters, which FSDP cannot shard, stay whole on every rank and their gradients are
all-reduced). Every forward and backward is now a collective, so every rank runs the
same number of them: a rank with no micro-batch left in a round runs one with its loss
scaled by 0 (``Learner``).

Rank 0 still owns the sockets: after every update all ranks gather the full state onto
rank 0's CPU (``refresh``) into an unsharded ``mirror`` of the policy, which is what the
weights link sends and a checkpoint saves (the same checkpoint layout as one rank's, so a
run resumes with any ``num_ranks`` or sharding). A checkpoint's optimizer state is
gathered on rank 0's order (``full_state``), which the other ranks follow from their
command loop (:func:`learner.data_parallel.receive`).

What it costs: one full state on rank 0's host memory (the mirror), a gather of the
weights after each update, and the unsharded policy on each rank's host memory at
start-up (it is built on the CPU and only its shards move to the GPU).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

log = logging.getLogger(__name__)

# The policy's entry points the learner calls instead of ``forward``; each must gather
# the root unit's parameters first (models.base.Policy).
FORWARD_METHODS = ("evaluate", "act")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_units(policy: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules sharded as units of their own, innermost first: instances of the
    classes any transformers model inside ``policy`` lists in ``_no_split_modules`` (its
    decoder and vision blocks). A policy without one (the CNN) is a single unit."""
    names: set = set()
    for module in policy.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [m for m in reversed(list(policy.modules()))
            if m is not policy and type(m).__name__ in names]


def replicated(policy: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters FSDP cannot shard (0-dim scalars, e.g. the CNN's attention
    sharpness): every rank keeps them whole, moved to the device, and the learner sums
    their gradients itself."""
    return [p for p in policy.parameters() if p.dim() == 0]


def shard(policy: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` ``policy`` in place over the default group's ``world`` ranks, its
    shards on ``device``; gradients are summed over the ranks, not averaged."""
    mesh = init_device_mesh(device.type, (world,))
    kept = set(replicated(policy))
    for p in kept:  # (fully_shard moves only what it shards)
        p.data = p.data.to(device)
    for module in [*shard_units(policy), policy]:
        fully_shard(module, mesh=mesh, ignored_params=kept)
        # A sum: each micro-batch's loss is already a share of the global mean. (Forced
        # to a plain SUM: a divide factor of 1 is PREMUL_SUM otherwise, which gloo lacks.)
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    for name in FORWARD_METHODS:
        if hasattr(policy, name):
            register_fsdp_forward_method(policy, name)
    return policy


def shard_learner(learner) -> None:
    """Shard ``learner``'s policy (and KL reference) across its data-parallel ranks, from
    the unsharded state every rank holds alike (after
    :func:`learner.data_parallel.share_state`): the optimizer and schedule are rebuilt
    over the shards with the same state. Rank 0 keeps an unsharded CPU ``mirror``."""
    dp = learner.dp
    # (Only a stepped optimizer's state is carried over: torch.distributed.checkpoint fills
    # an empty one with a zero-lr step, which would count in Adam's bias correction.)
    optim_state = get_optimizer_state_dict(learner.policy, learner.optimizer) \
        if learner.optimizer.state else None  # FQN-keyed
    schedule = learner.scheduler.state_dict()
    if dp.rank == 0:
        learner.mirror = copy.deepcopy(learner.policy).cpu().eval()
    shard(learner.policy, dp.world, learner.device)
    if learner.reference is not None:
        shard(learner.reference, dp.world, learner.device)
    learner.rebuild_optimizer()
    if optim_state is not None:
        set_optimizer_state_dict(learner.policy, learner.optimizer, optim_state,
                                 options=StateDictOptions(full_state_dict=True))
    learner.scheduler.load_state_dict(schedule)
    log.info("learner rank %d: FSDP2 over %d ranks, %d units", dp.rank, dp.world,
             len(shard_units(learner.policy)) + 1)


def refresh(learner) -> None:
    """Every rank: gather the full weights; rank 0 loads them into its mirror."""
    state = get_model_state_dict(learner.policy, options=FULL)
    if learner.dp.rank == 0:
        learner.mirror.load_state_dict(state)


def full_state(learner) -> tuple[dict, dict]:
    """Every rank: gather the optimizer state; rank 0 returns (the model's and the
    optimizer's state dicts) in one rank's layout (``torch.optim`` index keys), others
    empty dicts."""
    stepped = bool(learner.optimizer.state)  # (every rank alike)
    state = get_optimizer_state_dict(learner.policy, learner.optimizer, options=FULL) \
        if stepped else None
    if learner.dp.rank != 0:
        return {}, {}
    # Nothing stepped yet: the layouts agree (and the gather would fill the state).
    return learner.mirror.state_dict(), \
        index_keyed(state) if stepped else learner.optimizer.state_dict()


def index_keyed(state: dict) -> dict:
    """A full optimizer state keyed by parameter names (torch.distributed.checkpoint's
    layout) in ``torch.optim.Optimizer.state_dict``'s: parameters numbered in the order
    of the groups' ``params``."""
    number: dict = {}
    groups = []
    for group in state["param_groups"]:
        ids = [number.setdefault(name, len(number)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {number[name]: s for name, s in state["state"].items()},
            "param_groups": groups}
