"""Behaviour cloning: samples and chunks by hand, the split, the schedule, the CNN loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from demos import Demo
from models.cnn_policy import CNNGaussianPolicy
from sft.data import ChunkSamples, random_shift, split_by_episode
from sft.trainer import lr_factor
from tests.conftest import fit


def _demo(n, instruction="reach", value=0.0, size=16) -> Demo:
    actions = np.zeros((n, 7), np.float32)
    actions[:, 0] = np.arange(n) + value  # step t's action is t (+ value)
    actions[:, -1] = np.where(np.arange(n) < n // 2, -1.0, 1.0)  # open, then close
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # a pixel says which step it is
    return Demo(instruction, actions, np.zeros(n, np.float32), np.eye(n, dtype=bool)[-1],
                np.eye(n, dtype=bool)[-1], images, np.tile(np.arange(8, dtype=np.float32),
                                                          (n, 1)))


def test_chunks_pad_past_the_end_and_mask_it():
    samples = ChunkSamples([_demo(5)], chunk=3, gripper_convention="env", state_dim=8,
                           wrist=False)
    assert len(samples) == 5
    batch = samples.batch(np.array([0, 3, 4]))
    np.testing.assert_array_equal(batch.actions[:, :, 0], [[0, 1, 2], [3, 4, 4], [4, 4, 4]])
    np.testing.assert_array_equal(batch.mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(batch.obs.main_images[:, 0, 0, 0], [0, 3, 4])
    assert batch.obs.task_descriptions == ["reach"] * 3
    padded = ChunkSamples([_demo(5)], 3, "env", 8, wrist=False, pad=True)
    batch = padded.batch(np.array([3, 4]))
    np.testing.assert_array_equal(batch.actions[:, :, 0], [[3, 4, 4], [4, 4, 4]])
    assert batch.mask.all()


def test_gripper_and_state_follow_the_policy_conventions():
    samples = ChunkSamples([_demo(4)], chunk=4, gripper_convention="openvla", state_dim=7,
                           wrist=False)
    batch = samples.batch(np.array([0]))
    # env -1 (open) -> 1, +1 (close) -> 0: VLAs emit the gripper in [0, 1], 1 = open
    np.testing.assert_array_equal(batch.actions[0, :, -1], [1, 1, 0, 0])
    np.testing.assert_allclose(batch.obs.states[0], [0, 1, 2, 3, 4, 5, 6.5])
    with pytest.raises(ValueError, match="wrist"):
        ChunkSamples([_demo(4)], 4, "env", 8, wrist=True)


def test_random_shift_moves_content_by_at_most_pad():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 9, 9, 3), np.uint8)
    img[:, 4, 4] = 255
    out = random_shift(img, 2, rng)
    ys, xs = np.nonzero(out[..., 0] == 255)[1:]
    assert out.shape == img.shape and set(ys) | set(xs) <= {2, 3, 4, 5, 6}
    assert len(set(zip(ys, xs))) > 5  # different shifts for different images


def test_split_holds_out_episodes_per_task():
    demos = [_demo(3, "a", k) for k in range(10)] + [_demo(3, "b", k) for k in range(4)]
    train, val = split_by_episode(demos, 0.2, 0, np.random.default_rng(0))
    assert len(val) == 2 + 1 and len(train) == 8 + 3
    assert {d.instruction for d in val} == {"a", "b"}
    assert not {id(d) for d in train} & {id(d) for d in val}
    train, val = split_by_episode(demos, 0.0, 3, np.random.default_rng(0))
    assert len(train) == 6 and not val


def test_learning_rate_schedule_by_hand():
    assert lr_factor(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 0, 100, 0.0) == pytest.approx(1.0)


def test_cnn_nll_and_mse_by_hand_and_masked():
    torch.manual_seed(0)
    policy = CNNGaussianPolicy(num_action_chunks=2, action_dim=3, state_dim=8, hidden_dim=16,
                               image_resolution=16, init_log_std=math.log(0.5))
    samples = ChunkSamples([_demo(3, size=16)], 2, "env", 8, wrist=False)
    batch = samples.batch(np.array([0, 2]))
    inputs = policy.prepare(batch.obs, torch.device("cpu"))
    actions = torch.from_numpy(batch.actions[:, :, :3])
    mask = torch.from_numpy(batch.mask)
    mean = policy.act(inputs, True, 1.0).actions
    err = (actions - mean) ** 2
    m = mask[..., None].float()
    mse = (err * m).sum() / (m.sum() * 3)
    nll = ((err / (2 * 0.25) + math.log(0.5) + 0.5 * math.log(2 * math.pi)) * m).sum() / (
        m.sum() * 3)
    with torch.no_grad():
        assert float(policy.bc_loss(inputs, actions, mask, "mse")) == pytest.approx(float(mse))
        assert float(policy.bc_loss(inputs, actions, mask, "nll")) == pytest.approx(
            float(nll), rel=1e-5)
    with pytest.raises(ValueError, match="nll or mse"):
        policy.bc_loss(inputs, actions, mask, "l1")


def test_cnn_loss_falls_with_training():
    torch.manual_seed(0)
    policy = CNNGaussianPolicy(num_action_chunks=4, hidden_dim=32, image_resolution=16)
    samples = ChunkSamples([_demo(12, size=16), _demo(12, "other", 5.0, size=16)], 4, "env",
                           8, wrist=False)
    batch = samples.batch(np.arange(len(samples)))
    inputs = policy.prepare(batch.obs, torch.device("cpu"))
    actions, mask = torch.from_numpy(batch.actions) / 20, torch.from_numpy(batch.mask)
    mse_before = float(policy.bc_loss(inputs, actions, mask, "mse").detach())
    losses = fit(lambda: policy.bc_loss(inputs, actions, mask), policy.parameters(), 60, 3e-3)
    assert losses[-1] < losses[0] - 0.2
    assert float(policy.bc_loss(inputs, actions, mask, "mse").detach()) < 0.5 * mse_before


def _record_synthetic(folder, episodes=6):
    """Expert demonstrations of the synthetic task, recorded through the actor's core."""
    from actors.demos import DemoRecorder
    from actors.executor import StageExecutor
    from protocol.ids import IdSource
    from demos import DemoWriter
    from demos.layout import file_attributes
    from envs.synthetic import SyntheticReachEnv
    from experts.synthetic import ReachExpert

    env = SyntheticReachEnv(2, 1, image_size=48, max_episode_steps=12, agent_speed=0.1)
    writer = DemoWriter(folder, lambda d: file_attributes(d, "synthetic", {}, ""), 1)
    states = iter(range(100, 100 + episodes))
    stage = StageExecutor(env, [0, 1], 8, IdSource(0), lambda g: next(states, None),
                          [DemoRecorder(env, writer, "upright", "expert")],
                          expert=ReachExpert(env))
    while not stage.idle:
        stage.observe()
        stage.execute(None, None, None, 0)
    writer.close()
    return writer.written


def test_a_recorded_episode_keeps_the_frame_its_last_action_led_to(tmp_path):
    from demos import read_demos
    from envs.synthetic import SyntheticReachEnv

    assert _record_synthetic(tmp_path / "data", episodes=3) == 3
    demos, _ = read_demos([tmp_path / "data"])
    env = SyntheticReachEnv(1, 1, image_size=48, max_episode_steps=12, agent_speed=0.1)
    for demo in demos:  # replayed from its initial state, the env ends on that frame
        env.reset_group(0, demo.init_state_id)
        for action in demo.actions:
            env.step(np.array([0]), action[None])
        np.testing.assert_array_equal(demo.final_main_image, env.frame(0))
        assert not np.array_equal(demo.final_main_image, demo.main_images[-1])


@pytest.mark.slow
def test_openvla_oft_behaviour_cloning_writes_statistics_its_checkpoint_loads(tmp_path):
    import json

    from configs import load_config
    from models import build_policy
    from sft.trainer import run
    from models.tiny_vla import make_qwen_vl

    assert _record_synthetic(tmp_path / "data") == 6
    base = make_qwen_vl(tmp_path / "tiny")
    cfg = load_config(None, [
        "run.mode=sft", f"run.log_dir={tmp_path / 'sft'}", f"sft.datasets=[{tmp_path / 'data'}]",
        "model.kind=openvla_oft", f"model.model_path={base}", "model.use_wrist_image=false",
        "env.image_size=48", "sft.steps=6", "sft.batch_size=4", "sft.val_every=3",
        "sft.lr_warmup_steps=1", "sft.val_fraction=0.34"])
    assert run(cfg) == 0
    stats = json.loads((tmp_path / "sft" / "dataset_statistics.json").read_text())
    assert set(stats) == {"synthetic"} and len(stats["synthetic"]["action"]["q99"]) == 7
    import dataclasses

    loaded = build_policy(dataclasses.replace(
        cfg.model, checkpoint=str(tmp_path / "sft" / "checkpoint.pt")))
    # the statistics beside the checkpoint are the policy's action normalisation now
    np.testing.assert_allclose(loaded.norm.high.numpy(), stats["synthetic"]["action"]["q99"],
                               rtol=1e-6)
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["steps"] == 6 and summary["val_episodes"] == 2


def test_token_ar_behaviour_cloning_needs_no_camera_it_does_not_read(tmp_path):
    """A text-only token_ar policy (the state as tokens) clones demonstrations recorded
    without a wrist camera, although model.use_wrist_image is on by default, and its
    checkpoint loads with the statistics beside it."""
    import dataclasses
    import json

    from configs import load_config
    from models import build_policy
    from models.tiny_vla import make_qwen2_lm
    from sft.trainer import run

    assert _record_synthetic(tmp_path / "data") == 6
    lm = make_qwen2_lm(tmp_path / "lm")
    cfg = load_config(None, [
        "run.mode=sft", f"run.log_dir={tmp_path / 'sft'}", f"sft.datasets=[{tmp_path / 'data'}]",
        "model.kind=token_ar", f"model.model_path={lm}", "model.action_dim=7",
        "model.num_action_chunks=2", "env.image_size=48", "sft.steps=4", "sft.batch_size=4",
        "sft.val_every=2", "sft.lr_warmup_steps=1", "sft.val_fraction=0.34"])
    assert cfg.model.use_wrist_image
    assert run(cfg) == 0
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["steps"] == 4
    loaded = build_policy(dataclasses.replace(
        cfg.model, checkpoint=str(tmp_path / "sft" / "checkpoint.pt")))
    stats = json.loads((tmp_path / "sft" / "dataset_statistics.json").read_text())
    np.testing.assert_allclose(loaded.norm.high.numpy(), stats["synthetic"]["action"]["q99"],
                               rtol=1e-6)


def test_the_cnn_policy_reads_the_wrist_camera_when_configured():
    """Two demonstrations alike in everything but the wrist camera, with opposite
    actions: only a policy that reads the wrist camera can tell them apart."""
    def with_wrist(value, corner):
        demo = _demo(12, size=16)
        demo.actions[:, 0] = value  # the same action at every step: only the demo matters
        demo.wrist_images = np.zeros_like(demo.main_images)
        demo.wrist_images[:, corner:corner + 4, corner:corner + 4] = 255  # where the cube is
        return demo

    demos = [with_wrist(0.0, 0), with_wrist(6.0, 12)]
    samples = ChunkSamples(demos, 4, "env", 8, wrist=True)
    batch = samples.batch(np.arange(len(samples)))
    actions, mask = torch.from_numpy(batch.actions) / 20, torch.from_numpy(batch.mask)
    errors = {}
    for use_wrist in (False, True):
        torch.manual_seed(0)
        policy = CNNGaussianPolicy(num_action_chunks=4, hidden_dim=32, image_resolution=16,
                                   use_wrist=use_wrist)
        inputs = policy.prepare(batch.obs, torch.device("cpu"))
        assert ("wrist_images" in inputs) == use_wrist
        fit(lambda: policy.bc_loss(inputs, actions, mask, "mse"), policy.parameters(), 150,
            3e-3)
        with torch.no_grad():
            errors[use_wrist] = float(policy.bc_loss(inputs, actions, mask, "mse"))
    # the two demos' actions differ by 6/20 = 0.3 on dimension 0: blind to the wrist, the
    # best fit is their average, an error of 0.15² there (0.0032 over the 7 dimensions)
    assert errors[True] < 0.3 * errors[False]
    no_wrist = dataclasses.replace(batch.obs, wrist_images=None)
    with pytest.raises(ValueError, match="env.wrist_camera=true"):
        policy.prepare(no_wrist, torch.device("cpu"))


def test_a_cnn_policy_without_the_state_ignores_it():
    """model.cnn.read_state=false (a policy for a world model, whose states are zeros):
    the state changes nothing, and its size is not checked."""
    samples = ChunkSamples([_demo(6, size=16)], 4, "env", 8, wrist=False)
    obs = samples.batch(np.arange(len(samples))).obs
    torch.manual_seed(0)
    policy = CNNGaussianPolicy(num_action_chunks=4, hidden_dim=32, image_resolution=16,
                               read_state=False)
    other = dataclasses.replace(obs, states=np.random.default_rng(0).normal(
        size=(len(obs.states), 3)).astype(np.float32))
    means = [policy.act(policy.prepare(o, torch.device("cpu")), True, 1.0).actions
             for o in (obs, other)]
    torch.testing.assert_close(means[0], means[1], rtol=0, atol=0)
    torch.manual_seed(0)
    reading = CNNGaussianPolicy(num_action_chunks=4, hidden_dim=32, image_resolution=16)
    with pytest.raises(ValueError, match="model.state_dim=8"):
        reading.prepare(other, torch.device("cpu"))
