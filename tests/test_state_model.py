"""The state model (worldmodel/state_model.py) on a known system, and its data from real
HDF5 recordings."""

import numpy as np
import pytest
import torch

from demos import Demo
from demos.layout import file_attributes
from demos.writer import write_file
from worldmodel.ensemble import outcomes, proprio_error
from worldmodel.state_model import (StateEpisode, StateModel, load_state_episodes, losses,
                                    sample_windows, train_state_model)


def _pushes(n: int, rng: np.random.Generator, length: int = 12) -> list[StateEpisode]:
    """A point pushed by its actions: s' = s + 0.1 a; success once s[0] > 0.5."""
    out = []
    for _ in range(n):
        s = np.zeros((length, 2), np.float32)
        a = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
        a[:, 0] += rng.uniform(-0.5, 1.0)  # some episodes drift right, some left
        for t in range(1, length):
            s[t] = s[t - 1] + 0.1 * a[t - 1]
        nxt = np.concatenate([s[1:], s[-1:] + 0.1 * a[-1:]])
        out.append(StateEpisode(s, a, np.maximum.accumulate(nxt[:, 0] > 0.5)))
    return out


def test_windows_mask_the_steps_whose_next_state_was_not_recorded():
    ep = StateEpisode(np.arange(4, dtype=np.float32)[:, None], np.ones((4, 1), np.float32),
                      np.array([False, False, True, True]))
    first, acts, nexts, succ, mask, prop = sample_windows([ep], 3, 40, np.random.default_rng(0))
    for f, n, s, m in zip(first, nexts, succ, mask):
        t = int(f[0])
        assert t <= 2 and m.tolist() == [t + k + 1 < 4 for k in range(3)]
        assert n[0, 0] == t + 1 and bool(s[0]) == (t >= 2)  # success after action t


def test_it_learns_a_known_system_and_judges_outcomes_open_loop():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train, held = _pushes(200, rng), _pushes(60, rng)
    model = StateModel(2, 2, hidden=64, layers=2)
    with torch.no_grad():
        untrained = float(losses(model.eval(), sample_windows(held, 8, 256, rng))[0])
    train_state_model(model, train, 600, horizon=8, rng=rng)
    with torch.no_grad():
        dyn, suc, _ = losses(model, sample_windows(held, 8, 256, rng))
    assert float(dyn) < 0.05 * untrained and float(suc) < 0.2
    best, real = outcomes(model, held)
    assert 10 < real.sum() < 50  # both outcomes among the held-out episodes
    assert ((best >= 0.5) == real).mean() >= 0.9


def test_states_come_from_real_recordings_and_a_recording_without_them_is_named(tmp_path):
    rng = np.random.default_rng(1)
    frames = np.zeros((5, 8, 8, 3), np.uint8)
    demo = Demo("push", rng.normal(size=(5, 7)).astype(np.float32), np.zeros(5, np.float32),
                np.eye(5, dtype=bool)[4], np.array([0, 0, 0, 1, 1], bool), frames,
                rng.normal(size=(5, 8)).astype(np.float32),
                extras={"states": rng.normal(size=(5, 32))})
    write_file(tmp_path / "with" / "a.hdf5", demo, file_attributes(demo, "Lift", {}, "Lift"), 1)
    got, report = load_state_episodes([tmp_path / "with"])
    assert report.demos == 1 and len(got) == 1
    assert got[0].states.shape == (5, 32) and got[0].success.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(got[0].states, demo.extras["states"], rtol=1e-6)
    assert got[0].proprio is None
    np.testing.assert_array_equal(load_state_episodes([tmp_path / "with"], proprio=True)[0][0]
                                  .proprio, demo.states)  # the policy's state vector
    bare = Demo("push", demo.actions, demo.rewards, demo.dones, demo.success, frames,
                demo.states)
    write_file(tmp_path / "without" / "b.hdf5", bare, file_attributes(bare, "Lift", {}, "Lift"),
               1)
    got, report = load_state_episodes([tmp_path / "without"])
    assert got == [] and "states" in report.bad[0][1]


def test_a_proprioception_head_reads_the_policys_state_off_real_and_predicted_states():
    """q = (2 s0 + 1, -s1, s0 s1): what the policy would read, a function of the state."""
    rng = np.random.default_rng(2)
    torch.manual_seed(2)

    def with_proprio(eps):
        return [StateEpisode(e.states, e.actions, e.success, np.stack(
            [2 * e.states[:, 0] + 1, -e.states[:, 1], e.states[:, 0] * e.states[:, 1]],
            1).astype(np.float32)) for e in eps]

    train, held = with_proprio(_pushes(200, rng)), with_proprio(_pushes(40, rng))
    model = StateModel(2, 2, hidden=64, layers=2, proprio_dim=3)
    seen = []
    train_state_model(model, train, 600, horizon=8, rng=rng,
                      on_step=lambda k, *figures: seen.append(len(figures)) and False)
    assert seen[0] == 3  # dynamics, success, proprioception
    states = torch.from_numpy(np.concatenate([e.states for e in held]))
    want = np.concatenate([e.proprio for e in held])
    with torch.no_grad():
        got = model.proprio(states).numpy()
        # read off the states it predicts open loop too, as the env hands them over
        rolled = model.proprio(model.rollout(torch.from_numpy(held[0].states[:1]),
                                             torch.from_numpy(held[0].actions[None, :-1])))
    assert np.abs(got - want).mean() < 0.1 * np.abs(want).mean()
    assert np.abs(rolled[0].numpy() - held[0].proprio[1:]).mean() < 0.1 * np.abs(want).mean()
    error = proprio_error(model, held)
    np.testing.assert_allclose(error["recorded"], np.abs(got - want).mean(0), rtol=1e-5)
    assert len(error["predicted"]) == 3
    # a head that reads nothing gives the data's mean: its error is the mean deviation
    with torch.no_grad():
        model.proprio_head[-1].weight.zero_()
        model.proprio_head[-1].bias.zero_()
    np.testing.assert_allclose(proprio_error(model, held)["recorded"],
                               np.abs(model.q_mean.numpy() - want).mean(0), rtol=1e-5)
    bare = StateModel(2, 2, hidden=8)
    assert "q_mean" not in bare.state_dict()  # files from before the head load unchanged
    with pytest.raises(ValueError, match="state.proprio"):
        bare.proprio(states)
