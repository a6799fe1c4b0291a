"""The server's pure core: one forward pass for many requests, one reply for each."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from envs import observation_fields
from envs.base import EnvObs
from inference_server.batcher import Pending
from models.base import Policy
from protocol.messages import ActionReply, ErrorReply, ObsRequest


def _key(req: ObsRequest) -> tuple:
    """Requests that can share a forward pass have equal keys."""
    return (req.deterministic, *observation_fields.batch_key(req))


class InferenceCore:
    """Runs ``policy`` over batches of requests."""

    def __init__(self, policy: Policy, device: torch.device, temperature: float,
                 state_dim: int, dtype: Optional[torch.dtype] = None):
        self.policy, self.device, self.temperature = policy, device, temperature
        self.state_dim = state_dim
        self.dtype = dtype  # bf16 parameters: the forward pass runs in autocast
        self.version = -1
        self.passes = self.rows = self.max_requests_per_pass = 0

    def check(self, req: ObsRequest) -> str:
        """Why ``req`` cannot be served by this model ('' when it can)."""
        if req.states.shape[1] != self.state_dim:
            return (f"states have {req.states.shape[1]} dims but the model reads "
                    f"model.state_dim={self.state_dim}; align env and model configs")
        return ""

    def load(self, version: int, state: dict) -> None:
        """Swap in new weights (called between batches only). The model takes the
        received tensors themselves (``assign``): no copy, so the pause is short."""
        # the update has no frozen parameters (links.weights.synced_state): those stay
        self.policy.load_state_dict(state, strict=False, assign=True)
        self.version = version

    @torch.no_grad()
    def answer(self, batch: list[Pending]) -> list[tuple[bytes, object]]:
        """(peer, reply) for every request of ``batch``; requests of one kind share a pass."""
        groups: dict = {}
        for item in batch:
            groups.setdefault(_key(item.request), []).append(item)
        out = []
        for items in groups.values():
            out.extend(self._forward(items))
        return out

    def _forward(self, items: list[Pending]) -> list[tuple[bytes, object]]:
        reqs = [i.request for i in items]
        obs = observation_fields.from_requests(reqs)
        try:
            actions, logprobs, values = self.infer(obs, reqs[0].deterministic)
            if not all(np.isfinite(a).all() for a in (actions, logprobs, values)
                       if a is not None):  # a bf16 overflow, broken weights
                raise ValueError("the policy's forward pass gave non-finite actions, "
                                 "log-probs or values (NaN or inf)")
        except (ValueError, RuntimeError) as exc:
            return [(i.peer, ErrorReply(i.request.request_id, "policy_error", str(exc)))
                    for i in items]
        self.passes += 1
        self.rows += len(obs)
        self.max_requests_per_pass = max(self.max_requests_per_pass, len(items))
        replies, start = [], 0
        for item in items:
            end = start + item.rows
            replies.append((item.peer, ActionReply(
                item.request.request_id, self.version, actions[start:end],
                logprobs[start:end], None if values is None else values[start:end])))
            start = end
        return replies

    def infer(self, obs: EnvObs, deterministic: bool) -> tuple[np.ndarray, np.ndarray,
                                                                Optional[np.ndarray]]:
        """Actions [B,T,D], their log-probs [B,T,D] and values [B] (or None) for ``obs``."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16,
                            enabled=self.dtype is not None):
            result = self.policy.act(self.policy.prepare(obs, self.device), deterministic,
                                     self.temperature)
        values = None if result.values is None else result.values.float().cpu().numpy()
        return (result.actions.float().cpu().numpy(), result.logprobs.float().cpu().numpy(),
                values)


def cast_parameters(policy: torch.nn.Module, dtype: Optional[torch.dtype]) -> None:
    """The floating-point parameters in ``dtype`` (``inference.dtype``), buffers (action
    statistics) left in fp32; nothing for None."""
    if dtype is None:
        return
    for p in policy.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
