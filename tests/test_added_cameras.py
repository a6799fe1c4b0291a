"""A camera added to robosuite recordings afterwards (``envs/cameras.py``,
``scripts/render_camera.py``), rendered from the recorded simulator states, and read by a
world model as one of ``world_model.cameras`` that only its success model uses."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from configs import ConfigError, EnvConfig, RobosuiteEnvConfig, load_config
from demos import Demo
from demos.layout import MAIN, file_attributes, view_key
from demos.writer import write_file
from envs import make_env
from envs.cameras import place_camera, render_states
from envs.robot_io import orient_batch
from envs.world_model import WorldModelVectorEnv
from scripts.render_camera import main as render_camera
from tests.conftest import ROOT
from worldmodel.closed_loop import closed_loop
from worldmodel.data import ResetFrame, episode_from_demo, read_npy_trajectory
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel

SIZE = 64
VIEWS = ("main", "table_front")


@pytest.fixture(scope="module")
def lift():
    env = make_env(EnvConfig(kind="robosuite", robosuite=RobosuiteEnvConfig("Lift"),
                             image_size=SIZE, max_episode_steps=30, fast_render=True),
                   1, 1, 7)
    env.reset_group(0, 5)
    yield env
    env.close()


def _record(env, steps: int) -> Demo:
    """``steps`` random steps of one real Lift env, with their simulator states."""
    rng = np.random.default_rng(0)
    ids, images, extras = np.array([0]), [], []
    for _ in range(steps):
        images.append(env.observe(ids).main_images[0])
        extras.append(env.record_extras(ids)["states"][0])
        env.step(ids, rng.uniform(-0.5, 0.5, (1, 7)).astype(np.float32))
    n = len(images)
    return Demo("lift the red cube", rng.uniform(-1, 1, (n, 7)).astype(np.float32),
                np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool),
                np.stack(images), np.zeros((n, 8), np.float32),
                extras={"states": np.stack(extras)}, final_main_image=images[-1])


def test_render_camera_adds_the_view_from_the_recorded_states(lift, tmp_path, capsys):
    demo = _record(lift, 5)
    path = write_file(tmp_path / "rec" / "ep.hdf5", demo,
                      file_attributes(demo, "Lift", {"env": {"fast_render": True}}, "Lift"), 0)
    assert render_camera(["--camera", "table_front", str(tmp_path / "rec")]) == 0
    assert "for 1 demos" in capsys.readouterr().out
    with h5py.File(path) as f:
        obs = f["data/demo_0/obs"]
        added, main = obs[view_key("table_front")][()], obs[MAIN][()]
    assert added.shape == main.shape == (5, SIZE, SIZE, 3)
    assert np.abs(added.astype(int) - main).mean() > 20  # another viewpoint
    assert len({a.tobytes() for a in added}) == 5  # each step its own state's view
    # The states are the recorded frames' own: the main camera rendered from them gives
    # each recorded frame back, far nearer than the next step's. (Not to the pixel: a live
    # frame shows the bodies where MuJoCo's last substep began, mj_step integrating after
    # its kinematics; a rendered state is placed by mj_forward.)
    slot = lift.slots[0]
    again = render_states(slot.sim_env.sim, slot.renderer, slot.cameras[0],
                          demo.extras["states"]).astype(float)
    for t in range(4):
        own, next_step = np.abs(again[t] - main[t]).mean(), np.abs(again[t] - main[t + 1]).mean()
        assert own < 0.25 and own < next_step / 2, (t, own, next_step)
    # demos that have the view are left alone; --force renders them again, alike
    assert render_camera(["--camera", "table_front", str(path)]) == 0
    assert "for 0 demos" in capsys.readouterr().out
    assert render_camera(["--camera", "table_front", "--force", str(path)]) == 0
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["data/demo_0/obs"][view_key("table_front")][()],
                                      added)
    demo.extras = {}
    write_file(tmp_path / "bare.hdf5", demo, file_attributes(demo, "Lift", {}, "Lift"), 0)
    with pytest.raises(SystemExit, match="no simulator states"):
        render_camera(["--camera", "table_front", str(tmp_path / "bare.hdf5")])
    with pytest.raises(ValueError, match="unknown camera 'side'.*table_front"):
        place_camera(slot.sim_env.sim.model._model, slot.renderer, "side")


def test_a_4cm_lift_shows_in_more_pixels_from_table_front_than_from_the_main_camera(lift):
    """What the camera is for: the cube raised 4 cm (Lift's success) changes more than
    2.5 times as many 64 x 64 pixels of table_front as of agentview (145 against 43)."""
    slot = lift.slots[0]
    sim = slot.sim_env.sim
    model = sim.model._model
    lift.reset_group(0, 5)
    before = np.asarray(sim.get_state().flatten())
    cube = model.jnt_qposadr[model.body_jntadr[model.body("cube_main").id]]
    raised = before.copy()
    raised[1 + cube + 2] += 0.04  # the flattened state is time, qpos, qvel
    front = place_camera(model, slot.renderer, "table_front")
    changed = {}
    for name, cam in (("agentview", slot.cameras[0]), ("table_front", front)):
        a, b = render_states(sim, slot.renderer, cam, np.stack([before, raised])).astype(int)
        changed[name] = int((np.abs(a - b).sum(-1) > 30).sum())
    sim.set_state_from_flattened(before)
    sim.forward()
    assert changed["table_front"] > 2.5 * changed["agentview"] > 0, changed


def test_a_recording_with_record_cameras_keeps_the_view_its_states_render(tmp_path):
    """env.record_cameras: the recorder writes the view at every step, as the states
    recorded with it render it afterwards."""
    from actors.demos import DemoRecorder
    from actors.executor import StageExecutor
    from demos import DemoWriter, read_demos
    from experts import make_expert
    from protocol.ids import IdSource

    cfg = EnvConfig(kind="robosuite", robosuite=RobosuiteEnvConfig("Lift"), image_size=SIZE,
                    max_episode_steps=16, fast_render=True, wrist_camera=False,
                    record_cameras=["table_front"])
    env = make_env(cfg, 1, 1, 7)
    writer = DemoWriter(tmp_path / "rec", lambda d: file_attributes(d, "Lift", {}, "Lift"), 1)
    states = iter([7])
    stage = StageExecutor(env, [0], 8, IdSource(0), lambda g: next(states, None),
                          [DemoRecorder(env, writer, "upright", "expert")],
                          expert=make_expert(cfg, env))
    while not stage.idle:
        stage.observe()
        stage.execute(None, None, None, 0)
    writer.close()
    (demo,), _ = read_demos([tmp_path / "rec"], cameras=VIEWS)
    view = demo.views["table_front"]
    assert view.shape == demo.main_images.shape == (16, SIZE, SIZE, 3)
    slot = env.slots[0]
    again = orient_batch(render_states(slot.sim_env.sim, slot.renderer,
                                       slot.added["table_front"], _states(tmp_path / "rec")),
                         "upright")
    # each step's view is its state's (up to the live frame's substep, see above), far
    # nearer than the next step's
    own = np.abs(again.astype(float) - view).mean((1, 2, 3))
    next_step = np.abs(again[1:].astype(float) - view[:-1]).mean((1, 2, 3))
    assert own.mean() < 1.0 and (own[:-1] < next_step / 2).all(), (own, next_step)
    # the frame the last action led to is kept for the added view too: no action is lost
    final = demo.final_views["table_front"]
    assert final.shape == (SIZE, SIZE, 3) and not np.array_equal(final, view[-1])
    ep = episode_from_demo(demo, SIZE, VIEWS)
    assert len(ep) == len(demo) == 16
    np.testing.assert_array_equal(ep.frames[-1], np.concatenate([demo.final_main_image,
                                                                 final], -1))
    env.close()


def _states(folder) -> np.ndarray:
    (path,) = sorted(folder.rglob("*.hdf5"))
    with h5py.File(path) as f:
        return f["data/demo_0/states"][()]


def _demo(n: int) -> Demo:
    rng = np.random.default_rng(n)
    img = lambda: rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)  # noqa: E731
    return Demo("lift", rng.uniform(-1, 1, (n, 7)).astype(np.float32), np.zeros(n, np.float32),
                np.zeros(n, bool), np.zeros(n, bool), img(), np.zeros((n, 8), np.float32),
                wrist_images=img(), final_main_image=img()[0], views={"table_front": img()})


def test_the_views_stack_in_the_configured_order_through_hdf5(tmp_path):
    demo = _demo(5)
    write_file(tmp_path / "ep.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    from demos import read_demos

    back = read_demos([tmp_path / "ep.hdf5"], cameras=("main", "table_front", "wrist"))[0][0]
    ep = episode_from_demo(back, 16, ("main", "table_front", "wrist"))
    assert ep.frames.shape == (5, 16, 16, 9) and len(ep) == 4  # no final added view
    np.testing.assert_array_equal(ep.frames[..., 3:6], demo.views["table_front"])
    np.testing.assert_array_equal(ep.frames[..., 6:], demo.wrist_images)
    # with every view's final frame (recorded: final_obs) the last action is kept
    demo.final_views = {"table_front": demo.main_images[1], "wrist": demo.main_images[2]}
    write_file(tmp_path / "final.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    final = read_demos([tmp_path / "final.hdf5"], cameras=("main", "table_front", "wrist"))
    ep = episode_from_demo(final[0][0], 16, ("main", "table_front", "wrist"))
    assert ep.frames.shape == (6, 16, 16, 9) and len(ep) == 5
    np.testing.assert_array_equal(ep.frames[-1], np.concatenate(
        [demo.final_main_image, demo.final_views["table_front"], demo.final_views["wrist"]],
        -1))
    assert len(episode_from_demo(final[0][0], 16, VIEWS)) == 5
    back.views = {}
    with pytest.raises(ValueError, match="render_camera.py --camera table_front"):
        episode_from_demo(back, 16, VIEWS)
    demo.views = {}
    write_file(tmp_path / "plain.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    demos, report = read_demos([tmp_path / "plain.hdf5"], cameras=VIEWS)
    assert not demos and "render_camera.py --camera table_front" in report.bad[0][1]
    np.save(tmp_path / "traj0.npy", np.array([{"image": demo.main_images[0],
                                               "instruction": "lift"}], dtype=object))
    with pytest.raises(ValueError, match="no table_front camera"):
        read_npy_trajectory(tmp_path / "traj0.npy", VIEWS)


def test_an_added_view_is_the_success_models_alone():
    torch.manual_seed(0)
    model = WorldModel(ConvFramePredictor(2, 4, 7, channels=4, image_channels=6),
                       SuccessCNN(4, image_channels=6), -np.ones(7), np.ones(7), 16,
                       cameras=VIEWS).eval()
    frame = np.random.default_rng(0).integers(0, 255, (16, 16, 6), dtype=np.uint8)
    env = WorldModelVectorEnv(1, 1, model, [ResetFrame(frame, "lift")], max_episode_steps=8)
    env.reset_group(0, 0)
    obs = env.observe(np.array([0]))
    assert obs.wrist_images is None
    np.testing.assert_array_equal(obs.main_images[0], frame[..., :3])
    # what the policy sees is the main view; what is looked at is every view
    act = lambda o: np.zeros((len(o.task_descriptions), 4, 7), np.float32)  # noqa: E731
    ep = closed_loop(env, act, [0])[0]
    assert len(ep.frames) == 9 and ep.frames[0].shape == (16, 32, 3)
    np.testing.assert_array_equal(ep.frames[0], np.concatenate([frame[..., :3],
                                                                frame[..., 3:]], 1))
    np.testing.assert_array_equal(ep.frames[-1][:, :16], env.frame(0))


@pytest.mark.parametrize("cameras", ["[wrist,main]", "[main,side]", "[main,wrist,wrist]"])
def test_the_config_refuses_cameras_out_of_order_unknown_or_twice(cameras):
    path = ROOT / "configs/robosuite_lift_world_model.yaml"
    assert load_config(path, ["world_model.cameras=[main,table_front,wrist]"])
    with pytest.raises(ConfigError, match="main first, then any of wrist, table_front"):
        load_config(path, [f"world_model.cameras={cameras}"])


def _conv_model(cameras: tuple[str, ...], low: float, seed: int) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(ConvFramePredictor(2, 4, 7, channels=4, image_channels=3 * len(cameras)),
                       SuccessCNN(4, image_channels=3 * len(cameras)), np.full(7, low),
                       np.ones(7), 16, cameras=cameras).eval()
    with torch.no_grad():
        for p in model.generator.head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_a_composed_world_model_takes_each_view_from_its_own_predictor(tmp_path):
    """scripts/compose_world_model.py: main from a one-camera model, table_front from a
    two-camera one; each part sees its own views and its own action normalisation."""
    from scripts.compose_world_model import compose

    main = _conv_model(("main",), -0.5, 0)  # trained on other action bounds
    both = _conv_model(VIEWS, -1.0, 1)
    paths = {n: str(m.save(tmp_path / f"{n}.pt")) for n, m in (("main", main), ("both", both))}
    composed = compose(paths["both"], {"main": paths["main"], "table_front": paths["both"]})
    back = WorldModel.load(composed.save(tmp_path / "composed.pt"))
    assert back.cameras == VIEWS and back.generator.spec()["kind"] == "views"
    hist = torch.rand(2, 2, 6, 16, 16) * 2 - 1
    env_actions = torch.rand(2, 4, 7) * 1.2 - 0.4  # within both models' bounds
    out = back.generate(hist, back.normalise(env_actions))
    expect_main = main.generate(hist[:, :, :3], main.normalise(env_actions))
    expect_front = both.generate(hist, both.normalise(env_actions))[:, :, 3:]
    torch.testing.assert_close(out[:, :, :3], expect_main, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, 3:], expect_front, atol=1e-5, rtol=0)
    # the main part's own bounds matter: with the composed model's it would differ
    wrong = main.generate(hist[:, :, :3], both.normalise(env_actions))
    assert (wrong - expect_main).abs().max() > 1e-3
    torch.testing.assert_close(back.scorer.score(out[:, 0], ["lift", "lift"]),
                               both.scorer.score(out[:, 0], ["lift", "lift"]))
    with pytest.raises(ValueError, match="give --view for exactly the cameras"):
        compose(paths["both"], {"main": paths["main"]})
    with pytest.raises(ValueError, match="it must make table_front"):
        compose(paths["both"], {"main": paths["main"], "table_front": paths["main"]})
