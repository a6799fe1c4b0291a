"""A learner rank's share of a data-parallel update, over torch.distributed.

Every rank holds the same weights, optimizer state and update batch and draws the same
shuffles (one seed), so every rank knows every mini-batch. Micro-batch k of a mini-batch
is computed by rank ``k mod world`` only; each micro-batch's loss is already normalised by
its mini-batch's global counts (``learner.core``), so the sum of the ranks' gradients
(one all-reduce per optimizer step) is the one-rank gradient, and every rank then clips
and steps alike. The update's metric sums are added up across ranks at its end. One
update of ``world`` ranks therefore equals one update of one rank, up to the order of
float additions (``tests/test_data_parallel.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This learner's place in its data-parallel ``group``: ``rank`` of ``world``."""

    group: object
    rank: int
    world: int

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
