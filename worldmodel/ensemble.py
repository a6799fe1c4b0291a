"""K state models trained apart, judging pessimistically: RL in the world model is paid
only for what every member predicts.

GRPO in the Lift world model climbs the state model's false successes: rollouts whose
predicted states lift the cube while the real grasp misses (benchmarks/RESULTS.md, issue
17: 51% of the RL policy's world-model episodes). Model-based offline RL's answer is
pessimism where the learned dynamics are uncertain (MOPO, MOReL); their uncertainty is
the disagreement of an ensemble of dynamics models trained on bootstrap resamples of the
data (PETS). Here each member :class:`~worldmodel.state_model.StateModel` ``k`` of K
(its own initial weights, its own bootstrap of the training episodes) unrolls its own
state ``s^k`` from the same reset state under the same actions, and::

    success probability   p(t) = min_k p_k(s^k_t)        (a lift all K predict)
    state shown           s_t  = (1/K) sum_k s^k_t       (drawn, or read, for the policy)
    proprioception        q_t  = (1/K) sum_k q_k(s^k_t)

A false success the members do not share is no success; one member is the plain state
model (K = 1: min and mean of one). Ensemble states carry the member axis before the
state's: [..., K, S].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from worldmodel.state_model import StateEpisode, StateModel


class StateEnsemble(nn.Module):
    """K state models of one state and action size; see the module docstring."""

    def __init__(self, members: list[StateModel]):
        super().__init__()
        if not members:
            raise ValueError("a state ensemble needs at least one member")
        sizes = {(m.state_dim, m.action_dim, m.proprio_dim) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"a state ensemble's members must share (state, action, "
                             f"proprioception) sizes; got {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.state_dim, self.action_dim, self.proprio_dim = sizes.pop()

    def __len__(self) -> int:
        return len(self.members)

    def spec(self) -> dict:
        """What rebuilds this ensemble (its weights are its state_dict)."""
        return {"members": [m.spec() for m in self.members]}

    def start(self, first: torch.Tensor) -> torch.Tensor:
        """[B,S] -> [B,K,S]: every member starts from the same state."""
        return first.unsqueeze(-2).expand(*first.shape[:-1], len(self), first.shape[-1])

    def rollout(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[B,K,S] and env-unit [B,N,D] -> [B,N,K,S]: each member's N states from its own."""
        return torch.stack([m.rollout(states[:, k], actions)
                            for k, m in enumerate(self.members)], -2)

    def success_logits(self, states: torch.Tensor) -> torch.Tensor:
        """[...,K,S] -> [...]: the lowest member's logit, each on its own state."""
        return torch.stack([m.success_logits(states[..., k, :])
                            for k, m in enumerate(self.members)], -1).amin(-1)

    def mean(self, states: torch.Tensor) -> torch.Tensor:
        """[...,K,S] -> [...,S]: the state shown for the members' ones."""
        return states.mean(-2)

    def proprio(self, states: torch.Tensor) -> torch.Tensor:
        """[...,K,S] -> [...,P]: the members' proprioception, each read off its own
        state, averaged (needs ``proprio_dim``)."""
        return torch.stack([m.proprio(states[..., k, :])
                            for k, m in enumerate(self.members)], -2).mean(-2)


def as_ensemble(model: StateModel | StateEnsemble) -> StateEnsemble:
    """``model`` itself if an ensemble, else an ensemble of it alone (sharing its weights)."""
    return model if isinstance(model, StateEnsemble) else StateEnsemble([model])


def build_state_model(spec: dict) -> StateModel | StateEnsemble:
    """The state model or ensemble a ``spec()`` describes."""
    if "members" in spec:
        return StateEnsemble([StateModel(**m) for m in spec["members"]])
    return StateModel(**spec)


@torch.no_grad()
def open_loop(model: StateModel | StateEnsemble, episode: StateEpisode
              ) -> tuple[torch.Tensor, float]:
    """``episode`` replayed open loop from its first state with every recorded action, as
    the world-model env runs it from a reset: the predicted states [L,K,S] (the last
    action's too, which the env judges though no recording keeps it: a replayed
    world-model episode ends at the action its model called a success) and the highest
    success probability among them (the lowest member's, each on its own states)."""
    ens = as_ensemble(model)
    states = ens.rollout(ens.start(torch.from_numpy(episode.states[:1])),
                         torch.from_numpy(episode.actions[None]))[0]
    return states, float(torch.sigmoid(ens.success_logits(states)).max())


def outcomes(model: StateModel | StateEnsemble, episodes: list[StateEpisode]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each episode's :func:`open_loop` verdict: the highest success probability (float
    [E]), and the real outcome (bool [E]: a success after any action, the last too)."""
    return (np.array([open_loop(model, ep)[1] for ep in episodes]),
            np.array([bool(ep.success.any()) for ep in episodes]))


@torch.no_grad()
def proprio_error(model: StateModel | StateEnsemble, episodes: list[StateEpisode]
                  ) -> dict[str, list[float]]:
    """The proprioception head's mean absolute error per entry of the policy's state over
    ``episodes``: read off the recorded states (``recorded``, |q(s_t) - q_t|) and off the
    states predicted open loop from the first with the recorded actions (``predicted``,
    what the env hands the policy: |q(s^_t) - q_t|, t >= 1); an ensemble's members'
    readings averaged."""
    ens, recorded, predicted = as_ensemble(model), [], []
    for ep in episodes:
        states = ens.start(torch.from_numpy(ep.states))
        recorded.append(np.abs(ens.proprio(states).numpy() - ep.proprio))
        rolled = ens.rollout(states[:1], torch.from_numpy(ep.actions[None, :-1]))[0]
        predicted.append(np.abs(ens.proprio(rolled).numpy() - ep.proprio[1:]))
    return {"recorded": np.concatenate(recorded).mean(0).tolist(),
            "predicted": np.concatenate(predicted).mean(0).tolist()}


def shown_rollout(model: StateModel | StateEnsemble, first: torch.Tensor,
                  actions: torch.Tensor) -> torch.Tensor:
    """[B,S] and env-unit [B,N,D] -> [B,N,S]: the states shown for the N actions from
    ``first`` (a state model's own; an ensemble's members' mean)."""
    ens = as_ensemble(model)
    return ens.mean(ens.rollout(ens.start(first), actions))
