"""How much device memory a role's policy needs: the start-up estimate, and the refusal.

The learner holds, per rank (every rank a full replica)::

    weights + gradients + optimizer + reference + activations(micro_batch_size)

- weights: every parameter and buffer, in its dtype;
- gradients: one per trainable parameter, in its dtype (a frozen base has none: LoRA);
- optimizer: Adam's two moments, ``exp_avg`` and ``exp_avg_sq``, per trainable parameter;
- reference: a second copy of the weights when ``learner.kl_beta > 0`` (the KL anchor);
- activations: the peak of what one micro-batch allocates (inputs, what autograd keeps for
  backward, the backward pass's own tensors). This is *measured*, not modelled: one step
  of the learner's loss (``Policy.evaluate``, then backward) runs on the CPU in train mode
  (so gradient checkpointing applies), under bf16 autocast when the learner will run it
  (``learner.bf16`` on CUDA), while :class:`LiveBytes` counts the bytes of the tensors
  alive after each op; probes of 2 and 4 rows, extrapolated linearly op by op to the
  micro-batch, give its peak.

With ``learner.sharding: fsdp`` a rank holds 1/num_ranks of the weights, gradients, optimizer
and reference, plus ``gathered``: the largest shard unit's full weights, twice (the one in
use and the next, prefetched; :mod:`learner.sharding`).

A server holds ``weights`` in its serving dtype plus the peak of one no-grad ``act`` at
``inference.max_batch``, probed the same way.

Not counted: the CUDA context and kernels' workspaces (roughly 0.5-1 GiB per process), the
caching allocator's fragmentation, Adam's temporaries during its step, and the trajectory
batch itself (kept on the CPU). :func:`check_fits` therefore refuses only what cannot fit.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from configs import ConfigError
from envs.base import EnvObs
from links.weights import serving_dtype

log = logging.getLogger(__name__)
GIB = 1 << 30
PROBE_ROWS = (2, 4)  # the probes' batch sizes (not 1: a batch of one may take other paths)
PROBE_INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it " \
                    "on the plate"  # a LIBERO-length instruction: the prompt's tokens


class MemoryPlanError(ConfigError):
    """A role that cannot fit its device; the message has the numbers and the fix (a
    config error: the supervisor does not restart the role)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a role needs on its device, by part (see the module's docstring)."""

    role: str
    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    batch: int  # the rows the activations were extrapolated to
    gathered: int = 0  # sharded: the full weights of the units being gathered

    @property
    def total(self) -> int:
        """The sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.reference + \
            self.activations + self.gathered

    def describe(self) -> str:
        """``learner 3.10 GiB = weights 1.00 + gradients ... at 16 rows`` (nonzero parts)."""
        unit, scale = ("GiB", GIB) if self.total >= GIB else ("MiB", 1 << 20)
        parts = [f"{f.name} {getattr(self, f.name) / scale:.2f}" for f in fields(self)
                 if f.name not in ("role", "batch") and getattr(self, f.name)]
        return (f"{self.role} {self.total / scale:.2f} {unit} = {' + '.join(parts)} "
                f"{unit}, activations at {self.batch} rows")


def probe_obs(rows: int, image_size: int, state_dim: int, wrist: bool) -> EnvObs:
    """A batch of ``rows`` random observations of the configured env's shapes."""
    rng = np.random.default_rng(0)

    def images():
        return rng.integers(0, 256, (rows, image_size, image_size, 3), dtype=np.uint8)

    return EnvObs(images(), rng.standard_normal((rows, state_dim)).astype(np.float32),
                  [PROBE_INSTRUCTION] * rows, wrist_images=images() if wrist else None)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages alive while it is active, and their peak: a
    storage is counted from the op that allocates it (an output sharing no input's
    storage) until the last tensor on it is freed (autograd keeps saved tensors' Python
    objects alive, so what the graph holds for backward stays counted). Storages that
    existed before (parameters, inputs) are not counted. On the CPU this is what
    ``torch.cuda.max_memory_allocated`` measures on a GPU. ``trace``: the live bytes after
    each op, in order."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.trace: list[int] = []
        self._refs: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def _release(self, ptr: int) -> None:
        self._refs[ptr] -= 1
        if not self._refs[ptr]:
            del self._refs[ptr]
            self.live -= self._size.pop(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if not ptr or (ptr in inputs and ptr not in self._refs):
                continue  # empty, or a view of (or in-place on) a storage from before
            if ptr in self._refs:
                self._refs[ptr] += 1
            else:
                self._refs[ptr], self._size[ptr] = 1, storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        self.trace.append(self.live)
        return out


def step_trace(policy, obs: EnvObs, temperature: float, bf16: bool,
               train: bool) -> list[int]:
    """Bytes alive after each op of one step of ``policy`` on ``obs``, on the policy's
    device (the CPU at a role's start-up), above what was there before: with ``train``,
    the learner's micro-batch (``prepare``, the ``evaluate`` forward under bf16 autocast
    when ``bf16``, backward into gradients that already exist, as they do from the second
    micro-batch on); else a server's (``prepare`` and ``act``, no gradients)."""
    device = next(policy.parameters()).device  # the CPU at start-up; a GPU in gpu_check
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else \
        contextlib.nullcontext()
    was_training = policy.training
    policy.train(train)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    try:
        if not train:
            with torch.no_grad(), cast, LiveBytes() as live:
                policy.act(policy.prepare(obs, device), deterministic=False,
                           temperature=temperature)
            return live.trace
        with torch.no_grad():
            actions = policy.act(policy.prepare(obs, device), deterministic=False,
                                 temperature=temperature).actions
        for p in trainable:
            p.grad = torch.zeros_like(p)
        with LiveBytes() as live:
            with cast:
                ev = policy.evaluate(policy.prepare(obs, device), actions, temperature)
            loss = ev.logprobs.float().mean() - ev.entropy.float().mean()
            if ev.values is not None:
                loss = loss + ev.values.float().square().mean()
            loss.backward()
            del ev, loss
        return live.trace
    finally:
        for p in trainable:
            p.grad = None
        policy.train(was_training)


def activations(policy, cfg, rows: int, bf16: bool, train: bool) -> int:
    """Peak bytes of one step at ``rows`` rows, from probes of 2 and 4 rows: the same ops
    run in the same order whatever the batch, so the bytes alive after each op are
    extrapolated linearly op by op and the peak taken over them (a peak of maxima would
    miss that a small batch peaks in backward, at the weights' gradients, and a large one
    at the end of the forward pass, at the activations)."""
    env = cfg.env
    small, large = (step_trace(policy, probe_obs(n, env.image_size, env.state_dim,
                                                 env.wrist_camera),
                               cfg.inference.temperature, bf16, train) for n in PROBE_ROWS)
    if len(small) != len(large):  # a batch-dependent op sequence: scale the peaks
        log.debug("memory probe: %d ops at %d rows, %d at %d; peaks extrapolated",
                    len(small), PROBE_ROWS[0], len(large), PROBE_ROWS[1])
        small, large = [max(small)], [max(large)]
    scale = (rows - PROBE_ROWS[0]) / (PROBE_ROWS[1] - PROBE_ROWS[0])
    return int(max(max(a + scale * (b - a), 0) for a, b in zip(small, large)))


def _param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def learner_estimate(policy, cfg, on_cuda: bool) -> MemoryEstimate:
    """The learner rank's estimate for ``policy`` (built, on the CPU) under ``cfg``."""
    weights = _param_bytes(policy.parameters()) + _param_bytes(policy.buffers())
    trainable = _param_bytes(p for p in policy.parameters() if p.requires_grad)
    L = cfg.learner
    share, gathered = 1, 0
    if L.sharding == "fsdp":
        from learner.sharding import shard_units

        share, units = L.num_ranks, shard_units(policy)
        own = {id(p) for unit in units for p in unit.parameters()}
        root = _param_bytes(p for p in policy.parameters() if id(p) not in own)
        gathered = 2 * max([root] + [_param_bytes(u.parameters()) for u in units])
    return MemoryEstimate(
        role="learner", weights=weights // share, gradients=trainable // share,
        optimizer=2 * trainable // share,
        reference=weights // share if L.kl_beta > 0 else 0,
        activations=activations(policy, cfg, L.micro_batch_size, on_cuda and L.bf16,
                                True),
        batch=L.micro_batch_size, gathered=gathered)


def server_estimate(policy, cfg, serving_dtype: torch.dtype | None) -> MemoryEstimate:
    """A server's estimate for ``policy`` (built, on the CPU, before
    ``inference_server.core.cast_parameters`` casts its floating-point parameters to
    ``serving_dtype``; buffers stay as they are)."""
    cast = [p for p in policy.parameters() if serving_dtype and p.is_floating_point()]
    kept = [p for p in policy.parameters() if not (serving_dtype and p.is_floating_point())]
    weights = sum(p.numel() for p in cast) * (serving_dtype.itemsize if cast else 0) + \
        _param_bytes(kept) + _param_bytes(policy.buffers())
    rows = cfg.inference.max_batch
    return MemoryEstimate(role="inference", weights=weights, gradients=0, optimizer=0,
                          reference=0, activations=activations(
                              policy, cfg, rows, serving_dtype == torch.bfloat16, False),
                          batch=rows)


def budget(cfg, device: torch.device) -> tuple[int, str] | None:
    """The bytes a role may use and where that figure comes from: the named
    ``placement.gpu_memory_gib`` when set, else the CUDA device's free memory; None on a
    CPU with no named budget (nothing to check)."""
    named = cfg.placement.gpu_memory_gib
    if named > 0:
        return int(named * GIB), f"placement.gpu_memory_gib={named:g}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device} at start-up"
    return None


def check_fits(estimate: MemoryEstimate, cfg, device: torch.device) -> None:
    """Log the estimate; raise :class:`MemoryPlanError` when it exceeds the budget."""
    log.info("memory estimate, %s", estimate.describe())
    limit = budget(cfg, device)
    if limit is None or estimate.total <= limit[0]:
        return
    fix = ("learner.micro_batch_size lower, model.lora_rank > 0, "
           "model.gradient_checkpointing=true, or learner.sharding=fsdp over more "
           "learner.num_ranks"
           if estimate.role == "learner" else
           "inference.max_batch lower, inference.dtype=bf16, or a GPU of its own "
           "(placement.inference)")
    raise MemoryPlanError(f"memory estimate, {estimate.describe()}: more than the "
                          f"{limit[0] / GIB:.2f} GiB it has ({limit[1]}); set {fix}")


def check_role(role: str, policy, cfg, device: torch.device) -> MemoryEstimate | None:
    """At a role's start-up, before ``policy`` (built on the CPU) moves to ``device``:
    estimate its memory and refuse (:class:`MemoryPlanError`) what cannot fit, where there
    is a budget (a GPU, or ``placement.gpu_memory_gib``); elsewhere nothing is probed."""
    if budget(cfg, device) is None:
        return None
    if role == "learner":
        estimate = learner_estimate(policy, cfg, on_cuda=device.type == "cuda")
    else:
        estimate = server_estimate(policy, cfg, serving_dtype(cfg))
    check_fits(estimate, cfg, device)
    return estimate
