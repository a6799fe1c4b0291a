"""PPO's pure math against values computed by hand: GAE with episode ends and truncation
bootstraps, advantage normalisation, clipped Huber value loss, explained variance, the
three loss aggregations, decoupled-PPO behaviour weights and the KL estimate."""

import dataclasses
import math

import pytest
import torch

from learner.algorithms import (
    aggregate, aggregation_units, behaviour_weights, explained_variance, gae_advantages,
    huber, kl_to_reference, normalize_advantages, value_loss,
)

T = torch.tensor


def test_gae_two_episodes_terminal_then_truncated():
    # Episode A: 2 chunks, ends by success (terminal); episode B: 2 chunks, truncated,
    # bootstrapped with V(final obs) = 10. gamma .9, lambda .5.
    r = T([1.0, 2.0, 0.0, 1.0])
    v = T([0.5, 1.0, 2.0, 3.0])
    nv = T([1.0, 99.0, 3.0, 10.0])  # 99: ignored (terminal); 10: the bootstrap
    terminal = T([False, True, False, False])
    end = T([False, True, False, True])
    adv, ret = gae_advantages(r, v, nv, terminal, end, 0.9, 0.5)
    d1 = 2.0 - 1.0                       # r + 0 - V
    d0 = 1.0 + 0.9 * 1.0 - 0.5           # 1.4
    a0 = d0 + 0.9 * 0.5 * d1             # 1.85
    d3 = 1.0 + 0.9 * 10.0 - 3.0          # 7.0: bootstrapped, episode end
    d2 = 0.0 + 0.9 * 3.0 - 2.0           # 0.7
    a2 = d2 + 0.45 * d3                  # 3.85
    assert adv.tolist() == pytest.approx([a0, d1, a2, d3])
    assert ret.tolist() == pytest.approx([a0 + 0.5, d1 + 1.0, a2 + 2.0, d3 + 3.0])


def test_gae_does_not_leak_across_episodes():
    # The second episode's large advantage must not flow into the first's last step.
    adv, _ = gae_advantages(T([0.0, 100.0]), T([0.0, 0.0]), T([0.0, 0.0]),
                            T([True, True]), T([True, True]), 0.99, 0.95)
    assert adv.tolist() == [0.0, 100.0]


def test_normalize_over_valid_entries_unbiased():
    adv = T([1.0, 3.0, 100.0])
    out = normalize_advantages(adv, T([True, True, False]))
    s = math.sqrt(2.0)  # unbiased std of [1, 3]
    assert out.tolist() == pytest.approx([-1 / (s + 1e-6), 1 / (s + 1e-6), 0.0])


def test_huber_and_value_clipping():
    assert huber(T([0.5, -3.0]), 1.0).tolist() == pytest.approx([0.125, 2.5])
    # v moved 0.5 from v_old = 0 toward R = 2; clip 0.2 -> v_c = 0.2.
    # l1 = huber(0.5-2) = 1 * (1.5 - .5) = 1.0; l2 = huber(0.2-2) = 1.3 -> max 1.3, clipped
    loss, m = value_loss(T([0.5]), T([0.0]), T([2.0]), T([True]), 0.2, 1.0)
    assert loss.item() == pytest.approx(1.3) and m["value_clip_ratio"] == 1.0
    # Moving away from R: the clipped term is smaller, the unclipped one counts.
    loss, m = value_loss(T([-0.5, 9.0]), T([0.0, 0.0]), T([0.0, 0.0]), T([True, False]),
                         0.2, 1.0)
    assert loss.item() == pytest.approx(0.125) and m["value_clip_ratio"] == 0.0


def test_explained_variance():
    r = T([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(r, r, T([True] * 4)) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4), r, T([True] * 4)) == pytest.approx(0.0)
    assert math.isnan(explained_variance(r, torch.ones(4), T([True] * 4)))


def test_three_aggregations_by_hand():
    # Two chunks: [1, 2, (9 masked)] and [4, (9), (9)]; a third fully masked.
    losses = T([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = T([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).bool()
    assert aggregate(losses, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(losses, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4) / 2)
    assert aggregate(losses, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4) / 2)
    assert aggregation_units(mask, "token-mean") == 3
    assert aggregation_units(mask, "seq-mean-token-mean") == 2
    # Micro-batches with the global denominator add up to the global mean.
    for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        units = aggregation_units(mask, mode)
        parts = sum(aggregate(losses[i:i + 1], mask[i:i + 1], mode, units).item()
                    for i in range(3))
        assert parts == pytest.approx(aggregate(losses, mask, mode).item()), mode
    with pytest.raises(ValueError, match="valid"):
        aggregate(losses, mask, "seq-sum")


def test_behaviour_weights_on_a_hand_built_stale_batch():
    # Behaviour (stale) policy log-probs vs the proximal policy's: weights pi_prox/pi_behav.
    prox = T([math.log(0.5), math.log(0.9), math.log(0.1)])
    behav = T([math.log(0.5), math.log(0.3), math.log(0.4)])
    w, truncated = behaviour_weights(prox, behav, cap=2.0)
    assert w.tolist() == pytest.approx([1.0, 2.0, 0.25])  # 3.0 truncated to 2
    assert truncated.tolist() == [False, True, False]
    w, truncated = behaviour_weights(prox, behav, cap=0.0)
    assert w.tolist() == pytest.approx([1.0, 3.0, 0.25]) and not truncated.any()


def test_kl_k3_estimate():
    new, ref = T([math.log(0.5), math.log(0.5)]), T([math.log(0.5), math.log(0.25)])
    kl = kl_to_reference(new, ref)
    assert kl[0].item() == pytest.approx(0.0)
    d = math.log(0.5)  # ref - new
    assert kl[1].item() == pytest.approx(math.exp(d) - d - 1)


def test_decoupled_loss_clips_against_proximal_and_weights_by_behaviour():
    from learner.algorithms import ppo_actor_loss

    # Behaviour p=0.2 (stale), proximal p=0.4, current p=0.6, A = 1, cap 1.5:
    # ratio = .6/.4 = 1.5 -> clipped to 1.28; weight = .4/.2 = 2 -> truncated to 1.5.
    args = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                ratio_level="action_dim")
    lp = lambda p: T([[[math.log(p)]]])  # noqa: E731
    loss, m = ppo_actor_loss(lp(0.6), lp(0.2), T([1.0]), T([[True]]), **args,
                             prox_logprobs=lp(0.4), behav_weight_cap=1.5)
    assert loss.item() == pytest.approx(-1.28 * 1.5)
    assert m["behav_weight_truncated"] == 1.0 and m["behav_weight_mean"] == pytest.approx(1.5)
    # Without the correction the ratio .6/.2 = 3 is clipped against the behaviour.
    loss, _ = ppo_actor_loss(lp(0.6), lp(0.2), T([1.0]), T([[True]]), **args)
    assert loss.item() == pytest.approx(-1.28)


def test_gae_with_a_discount_per_step():
    # Action-level rewards: chunk 0 ran 2 actions (discount .9^2 = .81 to chunk 1), chunk 1
    # ran 1 before truncation (bootstrap 4, discount .9). lambda 1.
    adv, _ = gae_advantages(T([1.0, 1.0]), T([0.0, 2.0]), T([2.0, 4.0]), T([False, False]),
                            T([False, True]), T([0.81, 0.9]), 1.0)
    d1 = 1.0 + 0.9 * 4.0 - 2.0            # 2.6
    d0 = 1.0 + 0.81 * 2.0 - 0.0           # 2.62
    assert adv.tolist() == pytest.approx([d0 + 0.81 * d1, d1])


def test_chunk_and_action_level_rewards_by_hand():
    import numpy as np

    from learner.batch import chunk_rewards
    from tests.messages_factory import trajectory

    ep = trajectory(c=2, t=3, d=2)
    ar = np.array([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]], np.float32)
    ep = dataclasses.replace(ep, action_rewards=ar, rewards=ar.sum(1),
                             executed=np.array([2, 1], np.int32))
    r, d = chunk_rewards(ep, 0.5, "chunk")
    assert r.tolist() == [3.0, 4.0] and d.tolist() == [0.5, 0.5]
    r, d = chunk_rewards(ep, 0.5, "action")
    assert r.tolist() == pytest.approx([1.0 + 0.5 * 2.0, 4.0])
    assert d.tolist() == pytest.approx([0.25, 0.5])


def test_next_values_bootstrap_only_truncated_episodes():
    from learner.batch import ValueTargets
    from learner.targets import next_values

    # Three episodes: [c0 c1] terminal, [c2] truncated (bootstrap 7), [c3 c4] truncated (9).
    t = ValueTargets(rewards=torch.zeros(5), discounts=torch.full((5,), 0.9),
                     values=T([1.0, 2.0, 3.0, 4.0, 5.0]),
                     terminal=T([False, True, False, False, False]),
                     episode_end=T([False, True, True, False, True]), final_obs=None,
                     final_rows=T([2, 4]))
    assert next_values(t, T([7.0, 9.0])).tolist() == [2.0, 0.0, 7.0, 5.0, 9.0]


def test_lr_warmup_then_constant_or_cosine():
    from learner.schedule import lr_factor

    assert [lr_factor(s, 4, "constant", 10, 0.0) for s in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # Cosine after 2 warmup updates over 4 updates down to 0.1, then flat.
    got = [lr_factor(s, 2, "cosine", 4, 0.1) for s in range(2, 8)]
    want = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, .25, .5, .75, 1, 1)]
    assert got == pytest.approx(want)
    assert lr_factor(0, 0, "cosine", 4, 0.0) == 1.0
