"""A world model of two cameras (``world_model.cameras: [main, wrist]``): the views stacked
as channels in episodes and reset frames, the models' channels and file, the env's main
and wrist observations, and a short training run on HDF5 recordings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from configs import load_config
from demos import Demo
from demos.layout import file_attributes
from demos.writer import write_file
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from worldmodel import train as wm_train
from worldmodel.data import ResetFrame, Windows, episode_from_demo, reset_frames, split_views
from worldmodel.evaluate import generator_metrics
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel

SIZE = 16
BOTH = ("main", "wrist")


def _demo(n: int, seed: int, success: bool) -> Demo:
    """A square walking right in the main view; the wrist view darkens as it walks (and is
    white once the task is achieved): the two views differ."""
    rng = np.random.default_rng(seed)
    main = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    wrist = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    achieved = np.zeros(n, bool)
    if success:
        achieved[n // 2:] = True
    for t in range(n):
        col = min(t, SIZE - 4)
        main[t, 6:10, col:col + 4] = 200
        wrist[t] = 255 if t and achieved[t - 1] else 120 - 4 * t
    actions = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
    return Demo("lift the cube", actions, achieved.astype(np.float32), achieved, achieved,
                main, np.zeros((n, 8), np.float32), wrist_images=wrist,
                final_main_image=main[-1], init_state_id=seed, task_id=0, episode_id=seed,
                source="test")


def test_an_episode_stacks_the_views_and_drops_its_last_action_without_a_wrist_frame():
    demo = _demo(6, 0, True)
    ep = episode_from_demo(demo, SIZE, BOTH)
    # no final wrist frame is recorded: the last action has no two-camera frame to lead to
    assert ep.frames.shape == (6, SIZE, SIZE, 6) and len(ep) == 5
    np.testing.assert_array_equal(ep.frames[..., :3], demo.main_images)
    np.testing.assert_array_equal(ep.frames[..., 3:], demo.wrist_images)
    np.testing.assert_array_equal(ep.labels, [False, *demo.success[:5]])
    assert episode_from_demo(demo, SIZE).frames.shape == (7, SIZE, SIZE, 3)  # main only
    side = split_views(ep.frames)
    assert side.shape == (6, SIZE, 2 * SIZE, 3)
    np.testing.assert_array_equal(side[:, :, SIZE:], demo.wrist_images)
    demo.wrist_images = None
    with pytest.raises(ValueError, match="world_model.cameras=\\[main\\]"):
        episode_from_demo(demo, SIZE, BOTH)


def test_reset_frames_stack_the_wrist_view_from_hdf5_and_rlinf_trajectories(tmp_path):
    demo = _demo(4, 3, False)
    demo.init_state_id = 57
    write_file(tmp_path / "h5" / "ep.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    got = reset_frames([str(tmp_path / "h5")], SIZE, cameras=BOTH)
    np.testing.assert_array_equal(got[0].frame, np.concatenate(
        [demo.main_images[0], demo.wrist_images[0]], -1))
    assert got[0].init_state_id == 57  # where the real env starts the same episode
    rng = np.random.default_rng(0)
    step = {"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            "wrist_image": np.full((32, 32, 3), 0.5, np.float32), "instruction": "lift"}
    np.save(tmp_path / "traj0.npy", np.array([step], dtype=object), allow_pickle=True)
    got = reset_frames([str(tmp_path / "traj0.npy")], SIZE, cameras=BOTH)
    assert got[0].frame.shape == (SIZE, SIZE, 6) and (got[0].frame[..., 3:] == 128).all()
    assert got[0].init_state_id == -1  # RLinf's layout does not say
    del step["wrist_image"]
    np.save(tmp_path / "traj1.npy", np.array([step], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="'wrist_image'"):
        reset_frames([str(tmp_path / "traj1.npy")], SIZE, cameras=BOTH)


def _two_camera_model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(ConvFramePredictor(2, 4, 7, channels=4, image_channels=6),
                      SuccessCNN(4, image_channels=6), -np.ones(7), np.ones(7), SIZE,
                      cameras=BOTH).eval()


def test_the_env_shows_the_main_view_and_gives_the_wrist_view_as_the_wrist_camera(tmp_path):
    model = _two_camera_model()
    with torch.no_grad():
        model.generator.head.bias.fill_(0.05)
    back = WorldModel.load(model.save(tmp_path / "wm.pt"))
    assert back.cameras == BOTH
    hist, acts = torch.rand(1, 2, 6, SIZE, SIZE), torch.rand(1, 4, 7)
    torch.testing.assert_close(back.generate(hist, acts), model.generate(hist, acts))
    rng = np.random.default_rng(1)
    starts = [ResetFrame(rng.integers(0, 255, (SIZE, SIZE, 6), dtype=np.uint8), "lift")]
    env = WorldModelVectorEnv(2, 1, back, starts, max_episode_steps=8)
    env.reset_group(0, 0)
    obs = env.observe(np.array([0]))
    np.testing.assert_array_equal(obs.main_images[0], starts[0].frame[..., :3])
    np.testing.assert_array_equal(obs.wrist_images[0], starts[0].frame[..., 3:])
    results = env.step_chunk(np.array([0]), np.zeros((1, 4, 7), np.float32))
    assert results[-1].frames.shape == (1, SIZE, SIZE, 3)  # the contract's main camera
    np.testing.assert_array_equal(env.observe(np.array([0])).main_images, results[-1].frames)
    with pytest.raises(ValueError, match="16x16x3 frames \\(main\\)"):
        WorldModelVectorEnv(2, 1, WorldModel(ConvFramePredictor(2, 4, 7, channels=4),
                                             SuccessCNN(4), -np.ones(7), np.ones(7), SIZE),
                            starts, max_episode_steps=8)
    with pytest.raises(ValueError, match="2 cameras need 6 image channels"):
        WorldModel(ConvFramePredictor(2, 4, 7, channels=4), SuccessCNN(4), -np.ones(7),
                   np.ones(7), SIZE, cameras=BOTH)


class _RollDown(torch.nn.Module):
    """A stand-in predictor: each next frame is the last one rolled a row down, every
    channel alike (the PSNR bookkeeping around it is what is tested)."""

    def __init__(self, image_channels: int):
        super().__init__()
        self.condition_frames, self.chunk, self.image_channels = 2, 4, image_channels

    def generate(self, history, actions):
        last = history[:, -1:]
        return torch.cat([last.roll(i + 1, dims=-2) for i in range(self.chunk)], 1)


def test_psnr_counts_each_views_pixels_as_its_own():
    """Two identical views: the same PSNRs and changed-pixel share as the one camera."""
    eps = [episode_from_demo(_demo(8, s, s % 2 == 0), SIZE, BOTH) for s in range(3)]
    for ep in eps:
        ep.frames[..., 3:] = ep.frames[..., :3]
    main_only = [type(e)(e.frames[..., :3].copy(), e.actions, e.labels, e.instruction)
                 for e in eps]
    one = WorldModel(_RollDown(3), SuccessCNN(4), -np.ones(7), np.ones(7), SIZE)
    two = WorldModel(_RollDown(6), SuccessCNN(4, image_channels=6), -np.ones(7), np.ones(7),
                     SIZE, cameras=BOTH)
    a = generator_metrics(one, Windows(main_only, 2, 4), "cpu")
    b = generator_metrics(two, Windows(eps, 2, 4), "cpu")
    assert a["val_psnr_changed"] != a["copy_last_psnr_changed"]
    for key in ("val_psnr_changed", "copy_last_psnr_changed", "val_psnr_all",
                "changed_pixel_share"):
        assert b[key] == pytest.approx(a[key], rel=1e-9), key
    for key in ("val_psnr_changed", "copy_last_psnr_changed"):
        for camera in BOTH:  # each camera's own, here alike
            assert b[f"{key}_{camera}"] == pytest.approx(a[key], rel=1e-9), (key, camera)
    # no change in the second view: only the first's pixels count as changed
    for ep in eps:
        ep.frames[..., 3:] = 7
    c = generator_metrics(two, Windows(eps, 2, 4), "cpu")
    assert c["changed_pixel_share"] == pytest.approx(a["changed_pixel_share"] / 2)
    assert c["val_psnr_changed"] == pytest.approx(c["val_psnr_changed_main"], rel=1e-9)


def test_a_two_camera_world_model_trains_on_recordings_and_runs_as_an_env(tmp_path):
    for s in range(8):
        demo = _demo(10, s, s % 2 == 0)
        write_file(tmp_path / "rec" / f"state_{s}.hdf5", demo,
                   file_attributes(demo, "Lift", {}, "p"), 0)
    out = tmp_path / "wm"
    overrides = [f"run.log_dir={out}", "run.progress_every_s=0", "env.image_size=16",
                 f"world_model.datasets=[{tmp_path / 'rec'}]", "world_model.image_size=16",
                 "world_model.cameras=[main,wrist]", "world_model.channels=4",
                 "world_model.steps=4", "world_model.success_steps=4",
                 "world_model.batch_size=4", "world_model.success_batch_size=8",
                 "world_model.val_every=2", "world_model.val_fraction=0.25",
                 "world_model.videos=1", "world_model.probe_steps=3",
                 "world_model.position_dims=3", "world_model.state.steps=0",
                 "env.world_model.judge=frames", "env.world_model.frames=generator",
                 f"env.world_model.checkpoint={out / 'world_model.pt'}",
                 f"env.world_model.reset_data=[{tmp_path / 'rec'}]"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", overrides)
    assert wm_train.run(cfg) == 0
    summary = json.loads((out / "world_model_summary.json").read_text())
    assert summary["val_episodes"] == 2 and np.isfinite(summary["val_psnr_changed"])
    assert np.isfinite(summary["val_position_error"])  # the probe reads the main view
    assert (out / "videos" / "world_model" / "episode000_real_vs_generated.mp4").stat().st_size
    env = make_world_model_env(cfg.env, 2, 1, 7, 16, "cpu")
    assert env.model.cameras == BOTH and len(env.starts) == 8
    env.reset_group(1, 3)
    obs = env.observe(np.array([1]))
    assert obs.main_images.shape == obs.wrist_images.shape == (1, SIZE, SIZE, 3)
    assert len(env.step_chunk(np.array([1]), np.zeros((1, 8, 7), np.float32))) == 8
