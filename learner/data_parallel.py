"""A learner rank's share of a data-parallel update, over torch.distributed.

Every rank holds the same weights, optimizer state and update batch and draws the same
shuffles (one seed), so every rank knows every mini-batch. Micro-batch k of a mini-batch
is computed by rank ``k mod world`` only; each micro-batch's loss is already normalised by
its mini-batch's global counts (``learner.core``), so the sum of the ranks' gradients
(one all-reduce per optimizer step) is the one-rank gradient, and every rank then clips
and steps alike. The update's metric sums are added up across ranks at its end. One
update of ``world`` ranks therefore equals one update of one rank, up to the order of
float additions (``tests/test_data_parallel.py``).

In a run (``learner.num_ranks`` > 1) rank 0 is the learner (sockets, weights broadcast,
checkpoints) and hands each update's batch to the other ranks, processes of their own
(``launch.py`` starts them as ``learner`` 1..R-1, :func:`learner.worker.run_rank`), which
follow rank 0's orders: step on this batch, gather the state for a checkpoint, stop. With
``learner.sharding: replicate`` each rank holds the whole model (DDP's memory); with
``fsdp`` each holds a shard (:mod:`learner.sharding`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This learner's place in its data-parallel ``group``: ``rank`` of ``world``."""

    group: object
    rank: int
    world: int
    sharded: bool = False  # FSDP2 (learner.sharding=fsdp): forwards are collectives

    def mine(self, micro_batch: int) -> bool:
        """Whether this rank computes micro-batch ``micro_batch`` of a mini-batch."""
        return micro_batch % self.world == self.rank

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks, one flat buffer per dtype and
        device (a rank whose micro-batches never reached a parameter adds zeros)."""
        buckets: dict = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def sum_metrics(self, sums: dict, same: tuple[str, ...] = ()) -> dict:
        """Each key's sum over the ranks (a rank without it adds 0); the keys in ``same``
        hold one value every rank computed alike and are kept as they are."""
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, sums, group=self.group)
        out: dict = {}
        for part in gathered:
            for key, value in part.items():
                if key not in same:
                    out[key] = out.get(key, 0.0) + value
        out.update({k: sums[k] for k in same if k in sums})
        return out


def join(cfg, rank: int, device: torch.device, store=None) -> DataParallel:
    """Join the learner's ``learner.num_ranks`` ranks as ``rank`` (the default process
    group: gloo on CPU, NCCL on GPUs, each rank on its own GPU by the placement); rank 0
    hands in the weights store it hosts (tcp), the others reach it."""
    from links import wiring

    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = cfg.learner.num_ranks
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            store=wiring.learner_group_store(cfg, store), rank=rank,
                            world_size=world,
                            timeout=datetime.timedelta(seconds=cfg.network.join_timeout_s))
    return DataParallel(None, rank, world, cfg.learner.sharding == "fsdp")


def share_state(learner) -> None:
    """Rank 0's weights, optimizer and schedule state, version and shuffling generator to
    every rank (after rank 0 resumed, if it did): all ranks start each update alike."""
    state = [None]
    if learner.dp.rank == 0:
        state = [{"model": learner.policy.state_dict(),
                  "optimizer": learner.optimizer.state_dict(),
                  "scheduler": learner.scheduler.state_dict(), "version": learner.version,
                  "generator": learner.generator.get_state()}]
    dist.broadcast_object_list(state, src=0)
    if learner.dp.rank != 0:
        s = state[0]
        learner.policy.load_state_dict(s["model"])
        learner.optimizer.load_state_dict(s["optimizer"])
        learner.scheduler.load_state_dict(s["scheduler"])
        learner.version = s["version"]
        learner.generator.set_state(s["generator"])


STEP, STATE = "step", "state"  # the orders rank 0 gives


def hand_out(batch) -> None:
    """Rank 0: the update's batch to every rank (None: training is over)."""
    dist.broadcast_object_list([None if batch is None else (STEP, batch)], src=0)


def order_state() -> None:
    """Rank 0: every rank joins the gather of the full state (a sharded checkpoint)."""
    dist.broadcast_object_list([(STATE, None)], src=0)


def receive():
    """Ranks > 0: rank 0's next order, ``(STEP, batch)`` or ``(STATE, None)``; None:
    training is over."""
    got = [None]
    dist.broadcast_object_list(got, src=0)
    return got[0]
