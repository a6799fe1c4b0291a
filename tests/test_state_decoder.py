"""The world model's state decoder (worldmodel/decoder.py): frames drawn from simulator
states, trained by run.mode=train_world_model, saved in world_model.pt, and what the
world-model env shows with env.world_model.frames=state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from tests.test_state_judge import SIZE, _model, _push, _starts, small_state_run
from worldmodel import train as wm_train
from worldmodel.decoder import StateDecoder, StateFrames, decoder_psnr, train_decoder
from worldmodel.models import WorldModel, to_images
from worldmodel.state_model import StateEpisode, StateModel, train_state_model


def _square_frames(states: np.ndarray, size: int = SIZE) -> np.ndarray:
    """A grey scene with a bright 4x4 square whose corner is the state's (x, y) in [0, 1]."""
    frames = np.full((len(states), size, size, 3), 60, np.uint8)
    corner = np.clip((states[:, :2] * (size - 4)).round().astype(int), 0, size - 4)
    for f, (x, y) in zip(frames, corner):
        f[y:y + 4, x:x + 4] = (250, 200, 40)
    return frames


def test_the_decoder_draws_where_the_state_says():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    states = rng.uniform(0, 1, (2000, 3)).astype(np.float32)  # the 3rd entry draws nothing
    data = StateFrames(states, _square_frames(states))
    decoder = train_decoder(StateDecoder(3, 3, SIZE, channels=16, frequencies=3), data, 800,
                            32, 2e-3, rng)
    held = rng.uniform(0, 1, (200, 3)).astype(np.float32)
    got = decoder_psnr(decoder, _square_frames(held), held)
    # the mean frame (what a decoder that ignores the state draws) on the same pixels
    blind = StateDecoder(3, 3, SIZE, channels=16)
    blind.fit(data)
    baseline = decoder_psnr(blind, _square_frames(held), held)
    assert got["moving"] > baseline["moving"] + 6, (got, baseline)
    drawn = to_images(decoder.draw(torch.from_numpy(held[:1])))[0]
    real = _square_frames(held[:1])[0]
    square = np.abs(real.astype(int) - 60).max(-1) > 50
    assert np.abs(drawn[square].astype(int) - real[square]).mean() < 40  # the square is there


def test_the_decoder_refuses_a_size_it_cannot_draw():
    with pytest.raises(ValueError, match="4 x 2"):
        StateDecoder(3, 3, 48)


@pytest.fixture(scope="module")
def pushed() -> tuple[StateModel, StateDecoder]:
    """The push task's state model, and a decoder drawing its point as a square."""
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    episodes = [StateEpisode(s[:-1], a, y) for s, a, y in (_push(rng) for _ in range(300))]
    judge = train_state_model(StateModel(2, 7, hidden=64, layers=2), episodes, 600, rng=rng)
    states = np.concatenate([e.states for e in episodes])
    drawn = StateFrames(states, _square_frames(states / 2 + 0.5))
    decoder = train_decoder(StateDecoder(2, 3, SIZE, channels=8, frequencies=2), drawn, 300,
                            32, 2e-3, rng)
    return judge, decoder


def test_frames_from_states_follow_the_predicted_state(pushed):
    judge, decoder = pushed
    model = _model(-10.0, judge)
    model.decoder = decoder
    model.generator.generate = None  # frames=state never calls the frame predictor
    env = WorldModelVectorEnv(2, 2, model, _starts(), 12, judge="state", frames="state")
    env.reset_group(0, 0)
    actions = np.zeros((2, 4, 7), np.float32)
    actions[0, :, 0], actions[1, :, 0] = 1.0, -1.0
    before = env.sim[:, 0].clone()  # one member's
    steps = env.step_chunk(np.arange(2), actions)
    with torch.no_grad():
        expected = to_images(decoder.draw(judge.rollout(before, torch.from_numpy(actions))))
    for t, res in enumerate(steps):
        np.testing.assert_array_equal(res.frames, expected[:, t])
    np.testing.assert_array_equal(env.observe(np.arange(2)).main_images, expected[:, -1])
    assert not np.array_equal(expected[0, -1], expected[1, -1])  # pushed apart


def test_frames_from_states_need_a_decoder(pushed):
    judge, _ = pushed
    with pytest.raises(ValueError, match="world_model.decoder.steps"):
        WorldModelVectorEnv(2, 2, _model(0.0, judge), _starts(), 12, frames="state")


def test_the_decoder_travels_in_world_model_pt(pushed, tmp_path):
    judge, decoder = pushed
    model = _model(0.0, judge)
    model.decoder = decoder
    back = WorldModel.load(model.save(tmp_path / "wm.pt")).decoder
    s = torch.rand(3, 2)
    torch.testing.assert_close(back.draw(s), decoder.draw(s))
    assert WorldModel.load(_model(0.0, judge).save(tmp_path / "bare.pt")).decoder is None


def test_train_world_model_trains_a_decoder_and_the_env_draws_with_it(tmp_path):
    out = tmp_path / "wm"
    base = small_state_run(tmp_path, out) + [
        "world_model.decoder.steps=30", "world_model.decoder.channels=8",
        "world_model.decoder.batch_size=16", "env.world_model.frames=state"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", base)
    assert wm_train.run(cfg) == 0
    summary = json.loads((out / "world_model_summary.json").read_text())
    assert summary["steps"]["decoder"] == 30
    for key in ("decoder_psnr_moving", "decoder_psnr_all", "decoder_open_loop_psnr_moving"):
        assert np.isfinite(summary[key]), key
    env = make_world_model_env(cfg.env, 2, 2, 7, 12, "cpu")
    assert env.frames_from == "state" and env.model.decoder.state_dim == 5
    env.reset_group(0, 3)
    np.testing.assert_array_equal(env.sim[0, 0].numpy(), env.starts[3].sim_state)
    steps = env.step_chunk(np.arange(2), np.zeros((2, 8, 7), np.float32))
    assert len(steps) == 8 and steps[-1].frames.shape == (2, SIZE, SIZE, 3)
    # a decoder added to a trained world model: its other parts stay as they were
    more = base + [f"world_model.init={out / 'world_model.pt'}", "world_model.steps=0",
                   "world_model.success_steps=0", "world_model.state.steps=0",
                   f"run.log_dir={tmp_path / 'added'}"]
    assert wm_train.run(load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                                    more)) == 0
    added = json.loads((tmp_path / "added" / "world_model_summary.json").read_text())
    assert added["steps"]["decoder"] == 30 and "val_psnr_changed" not in added
    wider = more + [f"run.log_dir={tmp_path / 'wider'}", "world_model.decoder.channels=16"]
    with pytest.raises(ConfigError, match="init's decoder"):
        wm_train.run(load_config(ROOT / "configs/robosuite_lift_world_model.yaml", wider))


def test_bench_policy_on_generated_draws_from_recorded_and_predicted_states(pushed):
    from benchmarks.bench_policy_on_generated import drawn
    from worldmodel.data import Episode

    judge, decoder = pushed
    model = _model(0.0, judge)
    model.decoder = decoder
    s, a, y = _push(np.random.default_rng(5), length=6, drift=1.0)
    first = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    ep = Episode(np.zeros((7, SIZE, SIZE, 3), np.uint8), a, np.r_[False, y], "push right",
                 sim_states=s[:-1])
    recorded, predicted = drawn(model, first, ep)
    assert recorded.shape == predicted.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_array_equal(recorded[0], first[0])
    with torch.no_grad():
        np.testing.assert_array_equal(recorded[1:], to_images(decoder.draw(
            torch.from_numpy(s[1:-1]))))
        np.testing.assert_array_equal(predicted[1:], to_images(decoder.draw(judge.rollout(
            torch.from_numpy(s[:1]), torch.from_numpy(a[None, :5]))[0])))


def test_behaviour_cloning_shows_a_share_of_frames_drawn_from_the_recorded_states(tmp_path):
    """sft.drawn_frames: the samples' main camera from the world model's decoder at the
    recorded simulator state (upsampled to the demos' size), for drawn_share of them."""
    from sft import trainer
    from sft.drawn import drawn_main_images

    out = tmp_path / "wm"
    base = small_state_run(tmp_path, out) + ["world_model.state.steps=0",
                                             "world_model.decoder.steps=5",
                                             "world_model.decoder.channels=8"]
    assert wm_train.run(load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                                    base)) == 0
    sft = [f"run.log_dir={tmp_path / 'sft'}", f"sft.datasets=[{tmp_path / 'rec'}]",
           "sft.only_successes=false", f"env.image_size={2 * SIZE}", "sft.steps=2",
           "sft.batch_size=4", "sft.val_every=1", f"sft.drawn_frames={out / 'world_model.pt'}"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", sft)
    train, _, _, _ = trainer.load_samples(cfg, np.random.default_rng(0), False)
    model = WorldModel.load(out / "world_model.pt")
    demo = train.demos[0]
    with torch.no_grad():
        want = to_images(model.decoder.draw(torch.from_numpy(
            demo.extras["states"].astype(np.float32))))[..., :3]
    got = drawn_main_images([demo], str(out / "world_model.pt"))[0]
    assert got.shape == demo.main_images.shape  # 2x the decoder's size: each pixel 2 x 2
    np.testing.assert_array_equal(got[:, ::2, ::2], want)
    np.testing.assert_array_equal(got[:, 1::2, 1::2], want)
    rows = np.arange(len(train))
    rng = np.random.default_rng(0)
    for share, expect in ((1.0, got), (0.0, demo.main_images)):
        train.drawn_share = share
        batch = train.batch(rows[:len(demo)], rng)
        np.testing.assert_array_equal(batch.obs.main_images, expect)
    train.drawn_share = 0.5
    shown = train.batch(rows, rng).obs.main_images
    real = np.stack([train.demos[d].main_images[t] for d, t in train.index])
    assert 0.3 < (shown != real).any(axis=(1, 2, 3)).mean() < 0.7
    assert train.batch(rows).obs.main_images.tolist() == real.tolist()  # no rng: real frames
    assert trainer.run(cfg) == 0
    # a world model without a decoder, and recordings without states, are refused
    bare = WorldModel.load(out / "world_model.pt")
    bare.decoder = None
    bare.save(tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="no state decoder"):
        trainer.load_samples(load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                                         sft + [f"sft.drawn_frames={tmp_path / 'bare.pt'}"]),
                             np.random.default_rng(0), False)
    demo.extras.pop("states")
    with pytest.raises(ValueError, match="no simulator state per step"):
        drawn_main_images([demo], str(out / "world_model.pt"))
