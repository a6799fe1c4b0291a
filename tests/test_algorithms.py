"""grpo_advantages and ppo_actor_loss against values computed by hand."""

import math

import pytest
import torch

from learner.algorithms import (
    equal_score_groups, grpo_advantages, masked_mean, ppo_actor_loss, valid_elements,
)


def test_grpo_advantages_hand_values():
    # group 1: [1, 0, 0, 1] mean .5, unbiased std sqrt(1/3) = .57735
    # group 2: [0, 0, 0, 0] all equal -> 0
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 0]), 4)
    s = math.sqrt(1 / 3) + 1e-6
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_advantages_unequal_returns():
    # [3, 1]: mean 2, unbiased std sqrt(2) -> +-1/sqrt(2)
    adv = grpo_advantages(torch.tensor([3.0, 1.0]), 2)
    assert adv.tolist() == pytest.approx([1 / (math.sqrt(2) + 1e-6), -1 / (math.sqrt(2) + 1e-6)])


def test_equal_groups_and_group_size_one():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert equal_score_groups(scores, 2).tolist() == [True, False]
    assert grpo_advantages(torch.tensor([5.0, 2.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        grpo_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)


def _one(lp_new, lp_old, adv, **kw):
    """One chunk, one action, one dim: scalar checks of the clipping rules."""
    args = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                ratio_level="action_dim")
    args.update(kw)
    return ppo_actor_loss(torch.tensor([[[lp_new]]]), torch.tensor([[[lp_old]]]),
                          torch.tensor([adv]), torch.tensor([[True]]), **args)


def test_unclipped_ratio():
    loss, m = _one(math.log(1.1), 0.0, 2.0)  # r=1.1 inside [0.8, 1.28]
    assert loss.item() == pytest.approx(-2.0 * 1.1)
    assert m["clip_fraction"] == 0.0
    assert m["approx_kl"] == pytest.approx(-math.log(1.1))


def test_clip_high_with_positive_advantage():
    loss, m = _one(math.log(1.5), 0.0, 1.0)  # r=1.5 > 1.28 -> -A*1.28
    assert loss.item() == pytest.approx(-1.28)
    assert m["clip_fraction"] == 1.0
    assert m["clipped_ratio"] == pytest.approx(1.28)


def test_clip_low_with_negative_advantage():
    loss, m = _one(math.log(0.5), 0.0, -1.0)  # r=.5: max(.5, .8) = .8
    assert loss.item() == pytest.approx(0.8)
    assert m["clip_fraction"] == 1.0


def test_dual_clip_bounds_negative_advantage():
    loss, m = _one(math.log(5.0), 0.0, -2.0)  # max(10, 2.56)=10 > c*|A|=6 -> 6
    assert loss.item() == pytest.approx(6.0)
    assert m["dual_clip_fraction"] == 1.0
    loss, _ = _one(math.log(2.0), 0.0, -2.0)  # max(4, 2.56)=4 < 6: dual clip inactive
    assert loss.item() == pytest.approx(4.0)


def test_ratio_levels_and_mask():
    # One chunk, T=2 actions (second not executed), D=2 dims.
    new = torch.tensor([[[0.1, 0.2], [5.0, 5.0]]])
    old = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    adv = torch.tensor([1.0])
    kw = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    # per dim: mean(-e^.1, -e^.2) over the 2 valid dims
    loss, _ = ppo_actor_loss(new, old, adv, mask, ratio_level="action_dim", **kw)
    assert loss.item() == pytest.approx(-(math.exp(0.1) + math.exp(0.2)) / 2)
    # per action: r = e^.3 = 1.35 -> clipped to 1.28 (the masked action is ignored)
    loss, _ = ppo_actor_loss(new, old, adv, mask, ratio_level="action", **kw)
    assert loss.item() == pytest.approx(-1.28)
    # per chunk: the same sum over valid actions
    loss, m = ppo_actor_loss(new, old, adv, mask, ratio_level="chunk", **kw)
    assert loss.item() == pytest.approx(-1.28)
    assert m["clip_fraction"] == 1.0
    assert valid_elements(mask, 2, "action_dim") == 2
    assert valid_elements(mask, 2, "action") == 1
    assert valid_elements(mask, 2, "chunk") == 1


def test_true_mean_over_valid_elements_and_denominator():
    x = torch.tensor([1.0, 2.0, 30.0])
    mask = torch.tensor([1.0, 1.0, 0.0])
    assert masked_mean(x, mask).item() == pytest.approx(1.5)
    assert masked_mean(x, mask, denominator=6).item() == pytest.approx(0.5)


def test_micro_batches_add_up_to_global_mean():
    torch.manual_seed(0)
    new, old = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    adv, mask = torch.randn(6), torch.rand(6, 4) > 0.3
    kw = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
              ratio_level="action_dim")
    full, _ = ppo_actor_loss(new, old, adv, mask, **kw)
    denom = valid_elements(mask, 3, "action_dim")
    parts = sum(ppo_actor_loss(new[s], old[s], adv[s], mask[s], denominator=denom, **kw)[0]
                for s in (slice(0, 2), slice(2, 6)))
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)
