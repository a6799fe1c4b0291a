"""The world model: metrics by hand, windows, the models' file, the env contract (resets,
chunks, reward, success, truncation), RLinf's reset layout, and the executor's chunk path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actors.executor import StageExecutor
from demos import Demo
from envs.base import StepResult
from envs.synthetic import SyntheticReachEnv
from envs.world_model import (WorldModelVectorEnv, held_probs, make_world_model_env,
                              read_action_bounds)
from experts.synthetic import ReachExpert
from protocol.ids import IdSource
from worldmodel.closed_loop import closed_loop, replay, success_grid
from worldmodel.evaluate import (agreement_rates, imagine, open_loop_metrics, outcome_agreement,
                                 outcome_rates)
from worldmodel.data import (Episode, LabelledFrames, ResetFrame, Windows, episode_from_demo,
                             held_labels, reset_frames)
from worldmodel.metrics import changed_pixels, group_agreement, psnr, roc_auc, spearman, \
    squared_error
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel, to_images, \
    to_model_frames

SIZE = 16


def test_roc_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs won 2 of 4 by 0.8, 1 by 0.4 -> 3/4
    assert roc_auc([0.8, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == 0.75
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts half
    assert roc_auc([0.9, 0.1, 0.2], [1, 0, 0]) == 1.0
    assert np.isnan(roc_auc([0.3, 0.4], [0, 0]))


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) against (1.5, 1.5, 3): centred (-1, 0, 1) and (-0.5, -0.5, 1)
    assert spearman([0.1, 0.2, 0.3], [5, 5, 9]) == pytest.approx(1.5 / np.sqrt(2 * 1.5))
    assert np.isnan(spearman([1, 2], [3, 3]))


def test_psnr_on_the_pixels_that_change():
    last = np.zeros((1, 2, 2, 3), np.uint8)
    target = last[:, None].copy()
    target[0, 0, 0, 0, 0] = 255  # one pixel changes, in one channel
    where = changed_pixels(last, target)
    assert where.sum() == 1 and where[0, 0, 0, 0]
    sq, n = squared_error(np.broadcast_to(last[:, None], target.shape), target, where)
    assert (sq, n) == (1.0, 3)  # an error of 1 in one of the pixel's three channels
    assert psnr(sq, n) == pytest.approx(10 * np.log10(3))
    assert psnr(0.0, 3) == float("inf") and np.isnan(psnr(0.0, 0))


def _episode(n: int, success_at: int | None = None) -> Episode:
    frames = np.zeros((n + 1, SIZE, SIZE, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n + 1)  # a pixel says which frame it is
    actions = np.zeros((n, 7), np.float32)
    actions[:, 0] = np.arange(n)
    labels = np.zeros(n + 1, bool)
    if success_at is not None:
        labels[success_at] = True
    return Episode(frames, actions, labels, "reach")


def test_windows_repeat_the_first_frame_and_mask_past_the_end():
    windows = Windows([_episode(5)], condition_frames=3, chunk=4)
    assert len(windows) == 5
    b = windows.batch(np.array([0, 3]))
    np.testing.assert_array_equal(b.history[:, :, 0, 0, 0], [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_array_equal(b.actions[:, :, 0], [[0, 1, 2, 3], [3, 4, 4, 4]])
    np.testing.assert_array_equal(b.targets[:, :, 0, 0, 0], [[1, 2, 3, 4], [4, 5, 5, 5]])
    np.testing.assert_array_equal(b.mask, [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_an_episode_takes_its_final_frame_or_drops_its_last_action():
    n = 4
    images = np.arange(n)[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    success = np.eye(n, dtype=bool)[-1]
    demo = Demo("lift", np.ones((n, 7), np.float32), success.astype(np.float32), success,
                success, images.astype(np.uint8), np.zeros((n, 8), np.float32),
                final_main_image=np.full((8, 8, 3), 9, np.uint8))
    ep = episode_from_demo(demo, 4)
    assert ep.frames.shape == (5, 4, 4, 3) and ep.frames[-1, 0, 0, 0] == 9
    assert ep.labels.tolist() == [False, False, False, False, True]
    demo.final_main_image = None
    ep = episode_from_demo(demo, 8)
    assert len(ep) == 3 and ep.frames.shape[0] == 4 and not ep.labels.any()


def test_success_frames_are_drawn_half_positive():
    frames = LabelledFrames([_episode(9, success_at=9), _episode(5)])
    x, y, texts = frames.balanced(10, np.random.default_rng(0))
    assert y.sum() == 5 and (x[y][:, 0, 0, 0] == 9).all() and texts == ["reach"] * 10
    with pytest.raises(ValueError, match="both kinds"):
        LabelledFrames([_episode(3)])


def test_held_labels_need_success_held_and_leave_out_the_frames_before():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
    positive, usable = held_labels(labels, 2)
    assert positive.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1, 1]
    assert usable.tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1, 1]  # a lift undone is negative
    same, every = held_labels(labels, 0)
    assert (same == labels).all() and every.all()
    held = _episode(9, success_at=7)
    held.labels[7:] = True  # achieved at 7, held to 9: positive only at 9 with hold 2
    frames = LabelledFrames([held, _episode(5)], hold=2)
    assert frames.positive.tolist() == [9] and 7 not in frames.negative
    assert 8 not in frames.negative and 6 in frames.negative
    with pytest.raises(ValueError, match="held 3 steps"):
        LabelledFrames([held, _episode(5)], hold=3)


def _model(success_logit: float, k=2, t=4) -> WorldModel:
    torch.manual_seed(0)
    scorer = SuccessCNN(4)
    with torch.no_grad():  # a constant score: the env's reward logic is what is tested
        for p in scorer.parameters():
            p.zero_()
        scorer.head.bias.fill_(success_logit)
    return WorldModel(ConvFramePredictor(k, t, 7, channels=4), scorer, -np.ones(7),
                      np.ones(7), SIZE).eval()


def _starts(n=3):
    rng = np.random.default_rng(0)
    return [ResetFrame(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), f"task {i}")
            for i in range(n)]


def test_imagined_episodes_keep_the_real_first_frame_labels_and_lengths():
    model = _model(0.0, k=2, t=1)  # a fresh predictor copies: every frame is the first
    real = [_episode(5, success_at=5), _episode(3)]
    for ep in real:
        ep.frames[0, 3, 3] = 200
        ep.frames = np.broadcast_to(ep.frames[:1], ep.frames.shape).copy()
    imagined = imagine(model, real, "cpu")
    assert [len(e.frames) for e in imagined] == [6, 4]
    for got, ep in zip(imagined, real):
        np.testing.assert_array_equal(got.frames, ep.frames)
        assert got.labels is ep.labels and got.instruction == ep.instruction


@pytest.mark.parametrize("logit, on_failures, on_successes, agree", [
    (5.0, 1.0, 1.0, 0.5),     # every frame scores 0.99: the world model says all succeed
    (1.0, 0.0, 0.0, 0.5),     # 0.73: not a success at 0.9 (rounding would have made it 1)
    (-5.0, 0.0, 0.0, 0.5)])   # 0.007: none does
def test_outcome_agreement_counts_world_model_successes_per_real_outcome(
        logit, on_failures, on_successes, agree):
    model = _model(logit, k=2, t=1)
    real = [_episode(4, success_at=4), _episode(4), _episode(2, success_at=2), _episode(2)]
    got = outcome_agreement(model, real, imagine(model, real, "cpu"), 0.9, "cpu")
    assert got["wm_success_on_real_failures"] == on_failures
    assert got["wm_success_on_real_successes"] == on_successes
    assert got["outcome_agreement"] == agree and got["real_success_rate"] == 0.5
    # the success model alone on the real frames: a constant score says the same there
    scorer = open_loop_metrics(model, real, 0.9, "cpu")["scorer_success_on_real_failures"]
    assert scorer == on_failures


def test_open_loop_verdicts_need_success_held_for_the_env_rules_frames():
    model = _model(10.0, k=2, t=1)  # every generated frame succeeds
    real = [_episode(4, success_at=4), _episode(4), _episode(2, success_at=2), _episode(2)]
    held = open_loop_metrics(model, real, 0.9, "cpu", frames=3)  # 2-step episodes never do
    assert (held["wm_success_on_real_failures"], held["wm_success_on_real_successes"],
            held["wm_success_rate"]) == (0.5, 0.5, 0.5)
    assert open_loop_metrics(model, real, 0.9, "cpu", frames=2)["wm_success_rate"] == 1.0


def test_outcome_rates_threshold_each_episodes_peak():
    real = [_episode(4, success_at=4), _episode(4), _episode(2, success_at=2), _episode(2)]
    peaks = np.array([0.95, 0.6, 0.85, 0.92])  # successes first and third
    strict = outcome_rates(peaks, real, 0.9)
    assert (strict["wm_success_on_real_failures"], strict["wm_success_on_real_successes"],
            strict["outcome_agreement"], strict["wm_success_rate"]) == (0.5, 0.5, 0.5, 0.5)
    loose = outcome_rates(peaks, real, 0.5)
    assert loose["wm_success_on_real_failures"] == 1.0 and loose["outcome_agreement"] == 0.5
    assert outcome_rates(peaks, real, 0.95)["wm_success_rate"] == 0.25  # reaching counts


def test_agreement_rates_split_the_calls_by_the_real_outcome():
    """Five episodes, two real successes: the world model called one of them and two of
    the three real failures (what a state model's open-loop verdicts are scored by)."""
    said = np.array([True, False, True, True, False])
    real = np.array([True, True, False, False, False])
    got = agreement_rates(said, real)
    assert got["wm_success_on_real_failures"] == pytest.approx(2 / 3)
    assert got["wm_success_on_real_successes"] == 0.5
    assert got["outcome_agreement"] == pytest.approx(2 / 5)  # episodes 0 and 4
    assert (got["real_success_rate"], got["wm_success_rate"]) == (0.4, 0.6)
    assert np.isnan(agreement_rates(said[2:], real[2:])["wm_success_on_real_successes"])


def test_a_fresh_predictor_copies_the_last_frame():
    model = _model(0.0)
    frames = to_model_frames(np.stack([s.frame for s in _starts(2)]))[:, None].repeat(1, 2, 1,
                                                                                     1, 1)
    out = model.generator.generate(frames, torch.randn(2, 4, 7))
    np.testing.assert_array_equal(to_images(out[:, 3]), to_images(frames[:, -1]))


def test_an_unrolled_loss_conditions_each_call_on_the_frames_generated_so_far():
    """world_model.rollout_calls=2 with one frame per call: the second call's input is the
    first call's prediction (not the real frame), its change weights still come from the
    real frames, and the loss is the L1 formula by hand."""
    torch.manual_seed(0)
    p = ConvFramePredictor(condition_frames=2, chunk=1, action_dim=3, channels=8)
    torch.nn.init.normal_(p.head.weight, std=0.1)  # not the fresh "copy the last frame"
    hist = torch.rand(2, 2, 3, SIZE, SIZE) * 2 - 1
    actions, targets = torch.randn(2, 2, 3), torch.rand(2, 2, 3, SIZE, SIZE) * 2 - 1
    only_second = torch.tensor([[False, True], [False, True]])
    unrolled = p.loss(hist, actions, targets, only_second)

    def by_hand(second_input):
        pred = p(torch.cat([hist, second_input], 1)[:, -2:], actions[:, 1:])
        changed = (targets[:, 1:] - targets[:, :1]).abs().amax(2, keepdim=True) > 0.1
        weight = 1 + 4.0 * changed.float()
        return ((pred - targets[:, 1:]).abs() * weight).sum() / (weight.sum() * 3)

    torch.testing.assert_close(unrolled, by_hand(p(hist, actions[:, :1])))
    assert abs(float((unrolled - by_hand(targets[:, :1])).detach())) > 1e-3  # not teacher-forced
    unrolled.backward()  # the gradient reaches the weights through both calls
    assert float(p.head.weight.grad.abs().sum()) > 0


def test_each_camera_is_weighted_by_its_own_changes_and_counts_equally_in_the_loss():
    """Two cameras stacked: camera 0 has one moving pixel, camera 1 moves everywhere.
    Camera 0's moving pixel is weighted 5 and its still ones 1 (camera 1's motion marks
    none of them), each camera's weighted L1 is normalised by its own weights, and the
    loss is the mean of the two: camera 0's error counts as much as camera 1's."""
    p = ConvFramePredictor(condition_frames=1, chunk=1, action_dim=2, channels=8,
                           image_channels=6)  # a fresh head: copies the last frame
    hist = torch.zeros(1, 1, 6, 4, 4)
    targets = torch.zeros(1, 1, 6, 4, 4)
    targets[0, 0, 0, 0, 0] = 0.8  # camera 0: one pixel, one channel moves by 0.8
    targets[0, 0, 3:] = 0.5  # camera 1: every pixel of every channel by 0.5
    loss = p.loss(hist, torch.zeros(1, 1, 2), targets, torch.ones(1, 1, dtype=torch.bool))
    cam0 = 5 * 0.8 / (3 * (5 + 15 * 1))  # weights: 5 on the moving pixel, 1 on 15 others
    cam1 = 5 * 0.5 * 48 / (3 * 5 * 16)  # every pixel moved: weight 5 everywhere
    torch.testing.assert_close(loss, torch.tensor((cam0 + cam1) / 2))
    # One camera alone is the single-camera formula (sum |e| w / (3 sum w)).
    alone = p.__class__(1, 1, 2, channels=8).loss(hist[:, :, :3], torch.zeros(1, 1, 2),
                                                   targets[:, :, :3],
                                                   torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(alone, torch.tensor(cam0))


def test_the_world_model_file_round_trips_and_a_wrong_file_says_so(tmp_path):
    model = _model(-3.0)
    with torch.no_grad():
        model.generator.head.bias.fill_(0.1)
    path = model.save(tmp_path / "wm.pt")
    back = WorldModel.load(path)
    hist, acts = torch.rand(1, 2, 3, SIZE, SIZE), torch.rand(1, 4, 7)
    torch.testing.assert_close(back.generator.generate(hist, acts),
                               model.generator.generate(hist, acts))
    assert (back.chunk, back.condition_frames, back.image_size) == (4, 2, SIZE)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a world model"):
        WorldModel.load(tmp_path / "other.pt")


def test_env_resets_groups_alike_and_observes_the_contract():
    env = WorldModelVectorEnv(6, 3, _model(-10.0), _starts(), max_episode_steps=8)
    env.reset_group(0, 1)
    env.reset_group(1, 1002)  # task 1, state 2: reset frame 2 of 3
    obs = env.observe(np.arange(6))
    assert obs.main_images.dtype == np.uint8 and obs.main_images.shape == (6, SIZE, SIZE, 3)
    assert obs.states.shape == (6, 8) and not obs.states.any() and obs.wrist_images is None
    np.testing.assert_array_equal(obs.main_images[0], _starts()[1].frame)
    np.testing.assert_array_equal(obs.main_images[3], _starts()[2].frame)
    assert obs.task_descriptions == ["task 1"] * 3 + ["task 2"] * 3
    with pytest.raises(NotImplementedError, match="step_chunk"):
        env.step(np.arange(3), np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="a multiple of 4"):
        env.step_chunk(np.arange(3), np.zeros((3, 3, 7), np.float32))


def test_no_success_truncates_at_the_step_limit_with_zero_reward():
    env = WorldModelVectorEnv(2, 2, _model(-10.0), _starts(), max_episode_steps=6)
    env.reset_group(0, 0)
    first = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert len(first) == 4 and all(r.frames.shape == (2, SIZE, SIZE, 3) for r in first)
    assert not any(r.truncated.any() or r.success.any() or r.rewards.any() for r in first)
    second = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert second[1].truncated.all() and not second[0].truncated.any()
    assert not second[2].truncated.any()  # ended: later entries are empty


def test_success_terminates_and_the_reward_telescopes_to_coef_times_the_score():
    env = WorldModelVectorEnv(2, 2, _model(10.0), _starts(), max_episode_steps=20,
                              reward_coef=5.0)
    env.reset_group(0, 0)
    res = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert res[0].success.all() and res[0].terminated.all()
    assert res[0].rewards.tolist() == [5.0, 5.0] and not res[1].rewards.any()
    soft = WorldModelVectorEnv(2, 2, _model(0.0), _starts(), 20, reward_coef=2.0,
                               binary_score=False)  # every frame scores 0.5
    soft.reset_group(0, 0)
    res = soft.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert [r.rewards[0] for r in res] == [1.0, 0.0, 0.0, 0.0]  # 2 * (0.5 - 0) once
    assert not any(r.success.any() for r in res)
    # binary scores are 1 at the threshold, not at 0.5: 0.73 is no success at 0.9 ...
    strict = WorldModelVectorEnv(2, 2, _model(1.0), _starts(), 20, success_threshold=0.9)
    strict.reset_group(0, 0)
    res = strict.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert not any(r.success.any() or r.rewards.any() for r in res)
    # ... and is one at a threshold of 0.7
    loose = WorldModelVectorEnv(2, 2, _model(1.0), _starts(), 20, success_threshold=0.7)
    loose.reset_group(0, 0)
    res = loose.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    assert res[0].success.all() and res[0].rewards.tolist() == [1.0, 1.0]


def test_success_held_for_n_frames_counts_across_chunks_and_restarts_at_a_reset():
    np.testing.assert_allclose(held_probs(np.array([0.95, 0.5, 0.95, 0.95, 0.95]), 3),
                               [0.0, 0.0, 0.5, 0.5, 0.95])
    np.testing.assert_allclose(held_probs(np.array([[0.2, 0.9], [0.9, 0.8]]), 1),
                               [[0.2, 0.9], [0.9, 0.8]])
    env = WorldModelVectorEnv(2, 2, _model(10.0), _starts(), 20, success_frames=6)
    for _ in range(2):  # the second time: a reset forgets the frames scored before it
        env.reset_group(0, 0)
        first = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
        assert not any(r.success.any() or r.rewards.any() for r in first)
        second = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
        assert [bool(r.success[0]) for r in second[:2]] == [False, True]  # frame 6
        assert second[1].terminated.all() and second[1].rewards.tolist() == [1.0, 1.0]
        assert not second[0].rewards.any()


def test_the_executor_runs_a_chunk_in_one_call_and_films_its_frames():
    env = WorldModelVectorEnv(2, 2, _model(10.0), _starts(), max_episode_steps=20)
    seen = []

    class Films:
        wants_observations = False

        def on_reset(self, *a):
            pass

        def on_step(self, env_ids, obs, actions, result: StepResult):
            seen.append((list(env_ids), result.frames.shape))

        def on_end(self, *a):
            pass

    states = iter([0, 1])
    stage = StageExecutor(env, [0], 4, IdSource(0), lambda g: next(states, None), [Films()])
    stage.observe()
    trajs = stage.execute(np.zeros((2, 4, 7), np.float32), np.zeros((2, 4, 7), np.float32),
                          None, 0)
    assert len(trajs) == 2 and all(t.executed.tolist() == [1] and t.success_once
                                   for t in trajs)
    assert seen == [([0, 1], (2, SIZE, SIZE, 3))]  # one step ran: success at the first frame
    from experts.synthetic import ReachExpert
    with pytest.raises(ValueError, match="record the real simulator"):
        StageExecutor(env, [0], 4, IdSource(0), lambda g: 0, expert=ReachExpert(env))


def test_the_default_step_chunk_is_the_step_loop():
    from envs.synthetic import SyntheticReachEnv

    a, b = (SyntheticReachEnv(4, 2, image_size=16, max_episode_steps=5) for _ in range(2))
    for env in (a, b):
        env.reset_group(0, 7)
        env.reset_group(1, 8)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, 8, 7)).astype(np.float32)
    chunk = a.step_chunk(np.arange(4), actions)
    done = np.zeros(4, bool)
    for t in range(8):
        live = np.flatnonzero(~done)
        if not len(live):
            break
        res = b.step(live, actions[live, t])
        np.testing.assert_array_equal(chunk[t].rewards[live], res.rewards)
        np.testing.assert_array_equal(chunk[t].truncated[live], res.truncated)
        done[live] |= res.ended()
    assert done.all()  # every episode ended by step 5 (the limit): the rest are empty
    assert not any(r.rewards.any() or r.ended().any() for r in chunk[5:])


def test_reset_from_rlinf_trajectories_with_their_statistics(tmp_path):
    from configs import EnvConfig, WorldModelEnvConfig

    rng = np.random.default_rng(1)
    for i in range(2):
        steps = [{"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                  "instruction": f"put bowl {i}".encode(), "delta_action": np.zeros(7)}
                 for _ in range(3)]
        np.save(tmp_path / f"traj{i}.npy", np.array(steps, dtype=object), allow_pickle=True)
    np.save(tmp_path / "traj9_kir.npy", np.array([{}], dtype=object), allow_pickle=True)
    got = reset_frames([str(tmp_path)], SIZE)
    assert [g.instruction for g in got] == ["put bowl 0", "put bowl 1"]
    assert got[0].frame.shape == (SIZE, SIZE, 3)
    (tmp_path / "stats.json").write_text(json.dumps(
        {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7}}))  # RLinf's flat layout
    _model(-10.0).save(tmp_path / "wm.pt")
    cfg = EnvConfig(kind="world_model", image_size=SIZE, world_model=WorldModelEnvConfig(
        checkpoint=str(tmp_path / "wm.pt"), reset_data=[str(tmp_path)],
        stats_path=str(tmp_path / "stats.json")))
    env = make_world_model_env(cfg, 2, 1, 7, 16)
    assert env.model.action_high.tolist() == [2.0] * 7 and len(env.starts) == 2
    env.reset_group(1, 1)
    assert env.observe(np.array([1])).task_descriptions == ["put bowl 1"]
    (tmp_path / "openvla.json").write_text(json.dumps(
        {"lift": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}}))
    assert read_action_bounds(str(tmp_path / "openvla.json"))[1].tolist() == [1.0] * 7
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "traj0.npy", np.array([{"image": np.zeros((4, 4, 3))}],
                                                     dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="instruction"):
        reset_frames([str(tmp_path / "bad")], SIZE)


def test_the_success_model_reads_the_instruction():
    from worldmodel.train import success_loss

    # Each frame is all red or all blue; success means the frame shows the named colour:
    # from the frame alone no model beats chance, with the instruction the AUC reaches 1.
    red, blue = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    frames = np.stack([red, red, blue, blue])
    texts = ["go to red", "go to blue", "go to blue", "go to red"]
    labels = np.array([True, False, True, False])
    torch.manual_seed(0)
    model = WorldModel(ConvFramePredictor(1, 1, 7, 4), SuccessCNN(4), np.zeros(7),
                       np.ones(7), 8)
    opt = torch.optim.Adam(model.scorer.parameters(), lr=1e-2)
    for _ in range(150):
        loss = success_loss(model, frames, labels, texts, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = model.scorer.score(to_model_frames(frames), texts).numpy()
    assert roc_auc(got, labels) == 1.0 and float(loss.detach()) < 0.1


def test_the_position_probe_reads_a_bright_square_and_compares_generated_frames():
    from worldmodel.probe import position_errors, train_probe

    def episode(seed):  # a white dot walking right; the state's first entry is its column
        cols = np.arange(2, 14)
        frames = np.zeros((len(cols), SIZE, SIZE, 3), np.uint8)
        for k, c in enumerate(cols):
            frames[k, 6:9, c - 1:c + 2] = 255
        states = np.zeros((len(cols) - 1, 8), np.float32)
        states[:, 0] = cols[:-1]
        return Episode(frames, np.zeros((len(cols) - 1, 7), np.float32),
                       np.zeros(len(cols), bool), "reach", states)

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    probe = train_probe([episode(0)], 1, 300, rng)
    got = position_errors(_model(0.0, k=1, t=2), probe, Windows([episode(1)], 1, 2), "cpu")
    # the fresh predictor copies the last frame: its error is copy-last's, and the dot
    # moves 1.5 columns on average over a chunk of 2, which the probe must see
    assert got["val_position_error"] == pytest.approx(got["copy_last_position_error"])
    assert got["probe_position_error_real"] < 0.5 < got["copy_last_position_error"]
    assert got["val_position_gap"] == pytest.approx(got["copy_last_position_gap"])
    assert got["copy_last_position_gap"] > 0.5  # the probe sees the copied dot lag behind


def test_the_diffusion_generator_trains_samples_and_round_trips(tmp_path):
    from worldmodel.models import build_generator

    torch.manual_seed(0)
    gen = build_generator({"kind": "diffusion", "condition_frames": 2, "chunk": 3,
                           "action_dim": 7, "channels": 8, "sampling_steps": 2}, SIZE)
    hist = torch.rand(2, 2, 3, SIZE, SIZE) * 2 - 1
    acts, targets = torch.randn(2, 3, 7), torch.rand(2, 3, 3, SIZE, SIZE) * 2 - 1
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = gen.loss(hist, acts, targets, mask)
    loss.backward()
    assert torch.isfinite(loss) and gen.unet.conv_in.weight.grad.abs().sum() > 0
    assert gen.action_mlp[0].weight.grad.abs().sum() > 0  # the actions condition it
    model = WorldModel(gen, SuccessCNN(4), -np.ones(7), np.ones(7), SIZE).eval()
    first = model.generator.generate(hist, acts, torch.Generator().manual_seed(1))
    assert first.shape == (2, 3, 3, SIZE, SIZE) and first.abs().max() <= 1.0
    back = WorldModel.load(model.save(tmp_path / "wm.pt"))
    again = back.generator.generate(hist, acts, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, first)
    other = back.generator.generate(hist, acts, torch.Generator().manual_seed(2))
    assert not torch.equal(other, first)  # a sampled future, not a fixed one


def test_a_one_frame_model_runs_once_per_action_of_the_chunk():
    env = WorldModelVectorEnv(2, 2, _model(-10.0, k=2, t=1), _starts(), max_episode_steps=9)
    with torch.no_grad():  # each generation brightens the last frame by the same step
        env.model.generator.head.bias.fill_(0.1)
    env.reset_group(0, 0)
    res = env.step_chunk(np.arange(2), np.zeros((2, 4, 7), np.float32))
    means = [r.frames[0].astype(float).mean() for r in res]
    assert len(res) == 4 and all(b > a for a, b in zip(means, means[1:]))
    np.testing.assert_array_equal(env.observe(np.array([0])).main_images[0], res[-1].frames[0])


def test_actions_beyond_the_data_are_clipped_to_its_range_as_the_simulator_clips():
    env = WorldModelVectorEnv(3, 3, _model(-10.0), _starts(), max_episode_steps=8)
    torch.manual_seed(1)
    with torch.no_grad():  # a predictor whose frames depend on the actions
        for p in env.model.generator.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    env.reset_group(0, 0)  # all three from the same frame
    actions = np.stack([np.full((4, 7), a, np.float32) for a in (1.0, 5.0, 0.5)])
    last = env.step_chunk(np.arange(3), actions)[-1].frames
    np.testing.assert_array_equal(last[0], last[1])  # 5 is past q99 = 1: the same as 1
    assert not np.array_equal(last[0], last[2])


def test_group_agreement_by_hand():
    wm = [[1, 1, 0, 0], [1, 1, 1, 1]]
    real = [[1, 0, 0, 0], [0, 0, 0, 0]]
    got = group_agreement(wm, real)
    # centred wm: (.5 .5 -.5 -.5), (0 0 0 0); real: (.75 -.25 -.25 -.25), (0 0 0 0)
    # sum(a b) = .375 - .125 + .125 + .125 = .5; sum a^2 = 1, sum b^2 = .75
    assert got["advantage_correlation"] == pytest.approx(0.5 / np.sqrt(0.75))
    assert (got["wm_success"], got["real_success"]) == (0.75, 0.125)
    assert (got["false_success"], got["missed"], got["agreement"]) == (0.625, 0.0, 0.375)
    assert (got["mixed_wm"], got["mixed_real"]) == (0.5, 0.5)
    assert np.isnan(group_agreement([[1, 1]], [[0, 1]])["advantage_correlation"])


def test_replayed_actions_succeed_in_the_env_as_they_did_where_they_were_taken():
    """An expert's episodes in one synthetic env, replayed open loop in another (two envs
    for three episodes: batches): all of an episode's actions succeed, all but the last
    do not, none do not."""
    taken = SyntheticReachEnv(3, 1, image_size=16, max_episode_steps=40)
    expert = ReachExpert(taken)
    episodes = [[] for _ in range(3)]
    for e in range(3):
        taken.reset_group(e, e)
    live = np.arange(3)
    while len(live):
        acts = expert.act(live)
        res = taken.step(live, acts)
        for row, e in enumerate(live):
            episodes[e].append(acts[row])
        assert not res.truncated.any()
        live = live[~res.terminated]
    seqs = [np.stack(ep) for ep in episodes]
    assert min(len(s) for s in seqs) > 2  # the agent did not start on its target
    again = SyntheticReachEnv(2, 1, image_size=16, max_episode_steps=40)
    got = replay(again, [0, 1, 2], [seqs[0], seqs[1][:-1], np.zeros_like(seqs[2])])
    np.testing.assert_array_equal(got, [True, False, False])
    np.testing.assert_array_equal(replay(again, [2, 1], [seqs[2], seqs[1]]), [True, True])


def test_closed_loop_episodes_and_the_grid_of_frames_before_success():
    def act(obs):
        return np.zeros((len(obs.task_descriptions), 4, 7), np.float32)

    env = WorldModelVectorEnv(3, 1, _model(-10.0), _starts(), max_episode_steps=8)
    never = closed_loop(env, act, [0, 1, 2])
    assert [len(ep.frames) for ep in never] == [9, 9, 9]  # reset frame + 8 generated
    assert all(ep.first_success is None for ep in never) and success_grid(never) is None
    np.testing.assert_array_equal(never[2].frames[0], _starts()[2].frame)
    env = WorldModelVectorEnv(3, 1, _model(10.0), _starts(), max_episode_steps=8)
    won = closed_loop(env, act, [2, 0, 1])
    assert [ep.first_success for ep in won] == [1, 1, 1] and len(won[0].frames) == 2
    assert never[0].actions.shape == (8, 7) and won[0].actions.shape == (1, 7)  # as taken
    assert [ep.ret for ep in never] == [0.0] * 3 and [ep.ret for ep in won] == [1.0] * 3
    soft = WorldModelVectorEnv(1, 1, _model(0.0), _starts(), 8, binary_score=False)
    assert closed_loop(soft, act, [0])[0].ret == pytest.approx(0.5)  # telescoped: p = 0.5
    grid = success_grid(won, before=(1, 0), rows=2)
    assert grid.shape == (2 * SIZE, 3 * SIZE, 3)
    np.testing.assert_array_equal(grid[:SIZE, :SIZE], _starts()[2].frame)  # 1 before: reset
    np.testing.assert_array_equal(grid[:SIZE, SIZE:2 * SIZE], won[0].frames[1])
    np.testing.assert_array_equal(grid[SIZE:, 2 * SIZE:], _starts()[0].frame)
