"""Stochastic state dynamics (world_model.state.hypotheses): a grasp that holds in half of
the recordings and slips in the others, from the same state under the same actions. One
deterministic prediction regresses to the mean, a cube half raised that ends above the
success height in every rollout; M candidates trained winner-takes-all keep both outcomes,
and sampling them gives each about its frequency."""

import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from tests.conftest import ROOT
from worldmodel.ensemble import build_state_model
from worldmodel.state_model import StateEpisode, StateModel, losses, sample_windows, \
    train_state_model

LENGTH, RISE, SUCCESS = 16, 0.1, 0.5  # the gripper rises 0.1 a step; success: cube > 0.5
STEPS = 1500


def _grasps(n: int, rng: np.random.Generator) -> list[StateEpisode]:
    """State [gripper height, cube height], one action (lift); the cube follows the
    gripper (held) or stays on the table (slipped), each with probability 1/2."""
    out = []
    for _ in range(n):
        held = rng.random() < 0.5
        g = RISE * np.arange(LENGTH + 1, dtype=np.float32)
        s = np.stack([g, g if held else np.zeros_like(g)], 1)
        out.append(StateEpisode(s[:-1], np.ones((LENGTH, 1), np.float32),
                                s[1:, 1] > SUCCESS))
    return out


def _final_cubes(model: StateModel, n: int) -> np.ndarray:
    torch.manual_seed(1)
    with torch.no_grad():
        states = model.rollout(torch.zeros(n, 2), torch.ones(n, LENGTH, 1))
    return states[:, -1].numpy()


@pytest.fixture(scope="module")
def episodes() -> list[StateEpisode]:
    return _grasps(200, np.random.default_rng(0))


def _trained(episodes, hypotheses: int) -> StateModel:
    torch.manual_seed(0)
    return train_state_model(StateModel(2, 1, hidden=64, layers=2, hypotheses=hypotheses),
                             episodes, STEPS, rng=np.random.default_rng(0))


def test_one_prediction_raises_the_cube_halfway_and_calls_every_rollout_a_success(episodes):
    final = _final_cubes(_trained(episodes, 1), 50)
    top = RISE * LENGTH
    assert np.allclose(final[:, 1], top / 2, atol=0.15)  # the mean of held and slipped
    assert (final[:, 1] > SUCCESS).all()  # though half the recordings failed


def test_sampled_hypotheses_keep_both_outcomes_at_their_frequencies(episodes):
    final = _final_cubes(_trained(episodes, 2), 300)
    top = RISE * LENGTH
    assert np.allclose(final[:, 0], top, atol=0.1)  # the gripper rises in every rollout
    held, slipped = np.abs(final[:, 1] - top) < 0.2, np.abs(final[:, 1]) < 0.2
    assert (held | slipped).mean() > 0.9  # a cube carried or left, rarely in between
    assert 0.35 < (final[:, 1] > SUCCESS).mean() < 0.65  # about the recordings' 1/2


def test_the_winning_latent_takes_the_loss_and_the_prior_learns_which_won():
    torch.manual_seed(0)
    model = StateModel(2, 1, hidden=16, layers=2, hypotheses=3, window=4)
    window = sample_windows(_grasps(8, np.random.default_rng(1)), 4, 16,
                            np.random.default_rng(2))
    first, acts, nexts, _, mask = window[:5]
    dyn, _, _ = losses(model, window)
    # by hand: each latent's masked mean error over the window, the winner's, eps x their
    # mean, the prior's cross-entropy with the winner
    m = mask.float()
    per = torch.stack([((((model.rollout(first, acts, torch.full((16,), z)) - nexts)
                          / model.d_std) ** 2).mean(-1) * m).sum(1) / m.sum(1)
                       for z in range(3)], 1)
    win = per.argmin(1)
    want = (per[torch.arange(16), win] + 0.05 * per.mean(1)).mean() + \
        torch.nn.functional.cross_entropy(model.prior_logits(first), win)
    assert torch.allclose(dyn, want, atol=1e-6)


def test_a_rollout_draws_a_latent_for_each_window():
    model = StateModel(2, 1, hidden=16, layers=2, hypotheses=2, window=4)
    drawn = []
    model.draw = lambda s: drawn.append(len(s)) or torch.zeros(len(s), dtype=torch.long)
    model.rollout(torch.zeros(5, 2), torch.ones(5, 10, 1))
    assert drawn == [5, 5, 5]  # steps 0, 4 and 8
    drawn.clear()
    model.rollout(torch.zeros(5, 2), torch.ones(5, 10, 1), torch.ones(5, dtype=torch.long))
    assert drawn == []  # a latent given is kept throughout


def test_the_hypotheses_are_kept_in_the_spec_and_validated():
    model = StateModel(3, 2, hidden=16, layers=2, hypotheses=4)
    again = build_state_model(model.spec())
    again.load_state_dict(model.state_dict())
    assert (again.hypotheses, again.window) == (4, 8)
    assert "hypotheses" not in StateModel(3, 2, hidden=16).spec()  # older files load as one
    with pytest.raises(ConfigError, match="hypotheses"):
        load_config(ROOT / "configs" / "robosuite_lift_world_model.yaml",
                    ["world_model.state.hypotheses=0"])
