"""The world model's state model as the env's judge (env.world_model.judge): trained by
run.mode=train_world_model on recordings with simulator states, saved in world_model.pt,
reset from the recordings' first states, and deciding success where frames do not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from demos import Demo
from demos.layout import file_attributes
from demos.writer import write_file
from envs.world_model import WorldModelVectorEnv, make_world_model_env
from tests.conftest import ROOT
from worldmodel import train as wm_train
from worldmodel.data import ResetFrame, reset_frames
from worldmodel.models import ConvFramePredictor, SuccessCNN, WorldModel
from worldmodel.state_model import StateEpisode, StateModel, train_state_model

SIZE = 16


def _push(rng: np.random.Generator, length: int = 12, drift: float | None = None):
    """A point pushed by the first two of 7 action entries: s' = s + 0.1 a[:2], success
    once s[0] > 0.5 (states, actions, success after each action)."""
    s = np.zeros((length + 1, 2), np.float32)
    a = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
    a[:, 0] = np.clip(a[:, 0] + (rng.uniform(-0.5, 1.0) if drift is None else drift), -1, 1)
    for t in range(length):
        s[t + 1] = s[t] + 0.1 * a[t, :2]
    return s, a, np.maximum.accumulate(s[1:, 0] > 0.5)


@pytest.fixture(scope="module")
def judge() -> StateModel:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    episodes = [StateEpisode(s[:-1], a, y) for s, a, y in (_push(rng) for _ in range(300))]
    return train_state_model(StateModel(2, 7, hidden=64, layers=2), episodes, 800, rng=rng)


def _model(frames_logit: float, judge: StateModel | None) -> WorldModel:
    torch.manual_seed(0)
    scorer = SuccessCNN(4)
    with torch.no_grad():  # the frames' verdict is a constant: what the state says decides
        for p in scorer.parameters():
            p.zero_()
        scorer.head.bias.fill_(frames_logit)
    return WorldModel(ConvFramePredictor(2, 4, 7, channels=4), scorer, -np.ones(7), np.ones(7),
                      SIZE, state_model=judge).eval()


def _starts() -> list[ResetFrame]:
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    return [ResetFrame(frame, "push right", 0, np.zeros(2, np.float32))]


def _run(env: WorldModelVectorEnv, push: float, chunks: int = 3) -> list:
    """Whether each env succeeded, and at which step, pushing right (+) or left (-)."""
    env.reset_group(0, 0)
    actions = np.zeros((2, 4, 7), np.float32)
    actions[:, :, 0] = push
    steps = [r for _ in range(chunks) for r in env.step_chunk(np.arange(2), actions)]
    return [next((t for t, r in enumerate(steps) if r.success[e]), None) for e in range(2)]


def test_the_state_judge_decides_success_where_the_frames_never_would(judge):
    env = WorldModelVectorEnv(2, 2, _model(-10.0, judge), _starts(), 12, judge="state")
    right = _run(env, 1.0)
    assert right[0] == right[1] and 3 <= right[0] <= 6  # s[0] passes 0.5 at the 5th step
    assert _run(env, -1.0) == [None, None]
    assert _run(env, 1.0) == right  # a reset starts from the recorded state again
    frames = WorldModelVectorEnv(2, 2, _model(-10.0, judge), _starts(), 12)
    assert _run(frames, 1.0) == [None, None]  # the frames' judge alone: never
    both = WorldModelVectorEnv(2, 2, _model(-10.0, judge), _starts(), 12, judge="both")
    assert _run(both, 1.0) == [None, None]  # both must agree
    agree = WorldModelVectorEnv(2, 2, _model(10.0, judge), _starts(), 12, judge="both")
    assert _run(agree, 1.0) == right and _run(agree, -1.0) == [None, None]


def test_a_state_judge_needs_a_state_model_and_reset_states(judge):
    with pytest.raises(ValueError, match="world_model.state.steps"):
        WorldModelVectorEnv(2, 2, _model(0.0, None), _starts(), 12, judge="state")
    bare = [ResetFrame(np.zeros((SIZE, SIZE, 3), np.uint8), "push right")]
    with pytest.raises(ValueError, match="simulator states"):
        WorldModelVectorEnv(2, 2, _model(0.0, judge), bare, 12, judge="both")


def test_the_state_model_travels_in_world_model_pt(judge, tmp_path):
    path = _model(0.0, judge).save(tmp_path / "wm.pt")
    back = WorldModel.load(path).state_model
    s, a = torch.zeros(3, 2), torch.rand(3, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(back.rollout(s, a), judge.rollout(s, a))
    assert WorldModel.load(_model(0.0, None).save(tmp_path / "bare.pt")).state_model is None


def _recording(seed: int, folder) -> None:
    rng = np.random.default_rng(seed)
    s, a, y = _push(rng, drift=1.0 if seed % 2 else -0.5)
    frames = np.zeros((12, SIZE, SIZE, 3), np.uint8)
    frames[:, 4:8, 4:8] = 40 + 10 * np.arange(12)[:, None, None, None]
    sim = np.concatenate([s[:-1], rng.normal(size=(12, 3))], 1)  # [12, 5]: 3 still entries
    sim[:, 2:] = sim[:1, 2:]
    demo = Demo("push right", a, y.astype(np.float32), np.eye(12, dtype=bool)[11], y, frames,
                np.zeros((12, 8), np.float32), final_main_image=frames[-1], init_state_id=seed,
                task_id=0, episode_id=seed, source="test", extras={"states": sim})
    write_file(folder / f"state_{seed}.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)


def small_state_run(tmp_path, out) -> list[str]:
    """16 push recordings with simulator states under ``tmp_path/rec``, and the overrides
    of a seconds-long world-model run on them (a 40-step state model) written to ``out``,
    its frames the predictor's (the pushes' 5-D states are no robosuite scene's, so no
    kinematic tree)."""
    for seed in range(16):
        _recording(seed, tmp_path / "rec")
    return [f"run.log_dir={out}", "run.progress_every_s=0", f"env.image_size={SIZE}",
            f"world_model.datasets=[{tmp_path / 'rec'}]", f"world_model.image_size={SIZE}",
            "world_model.channels=4", "world_model.steps=2", "world_model.success_steps=2",
            "world_model.batch_size=4", "world_model.success_batch_size=8",
            "world_model.val_every=2", "world_model.val_fraction=0.25", "world_model.videos=0",
            "world_model.probe_steps=2", "world_model.cameras=[main]", "world_model.state.steps=40",
            "world_model.state.hidden=32", "world_model.state.batch_size=32",
            "world_model.state.kinematics=false",
            f"env.world_model.checkpoint={out / 'world_model.pt'}",
            f"env.world_model.reset_data=[{tmp_path / 'rec'}]", "env.world_model.frames=generator"]


def test_train_world_model_trains_it_and_the_env_resets_from_recorded_states(tmp_path):
    out = tmp_path / "wm"
    base = small_state_run(tmp_path, out) + ["env.world_model.judge=state"]
    cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml", base)
    assert wm_train.run(cfg) == 0
    summary = json.loads((out / "world_model_summary.json").read_text())
    assert summary["steps"]["state"] == 40 and summary["state_model_val_episodes"] == 4
    assert 0 <= summary["state_model_auc"] <= 1 and np.isfinite(summary["val_psnr_changed"])
    by_set = summary["state_model_by_dataset"][str(tmp_path / "rec")]
    assert by_set["episodes"] == 4 and 0 <= by_set["false"] + by_set["missed"] <= 4
    env = make_world_model_env(cfg.env, 2, 2, 7, 12, "cpu")
    assert env.judge == "state" and env.model.state_model.state_dim == 5
    env.reset_group(0, 3)
    np.testing.assert_array_equal(env.sim[0, 0].numpy(), env.starts[3].sim_state)
    assert len(env.step_chunk(np.arange(2), np.zeros((2, 8, 7), np.float32))) == 8
    # a state model added to a trained world model: its frame parts stay as they were
    tuned = tmp_path / "tuned"
    more = base + [f"run.log_dir={tuned}", f"world_model.init={out / 'world_model.pt'}",
                   "world_model.steps=0", "world_model.success_steps=0",
                   "world_model.state.steps=20", "world_model.state.proprio=true"]
    assert wm_train.run(load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                                    more)) == 0
    before, after = (WorldModel.load(d / "world_model.pt") for d in (out, tuned))
    for key, value in before.generator.state_dict().items():
        torch.testing.assert_close(after.generator.state_dict()[key], value)
    summary = json.loads((tuned / "world_model_summary.json").read_text())
    assert summary["steps"]["state"] == 20 and "val_psnr_changed" not in summary
    # ... and its state model trained on from init's: the normaliser kept, the weights moved
    old, new = before.state_model.state_dict(), after.state_model.state_dict()
    torch.testing.assert_close(new["s_std"], old["s_std"])
    assert not torch.equal(new["dynamics.0.weight"], old["dynamics.0.weight"])
    # with a proprioception head added (the recordings' policy states), which the env hands on
    assert after.state_model.proprio_dim == 8 and before.state_model.proprio_dim == 0
    assert all(len(summary["state_model_proprio_abs_error"][k]) == 8 and
               np.isfinite(summary["state_model_proprio_abs_error"][k]).all()
               for k in ("recorded", "predicted"))
    more_cfg = load_config(ROOT / "configs/robosuite_lift_world_model.yaml",
                           more + [f"env.world_model.checkpoint={tuned / 'world_model.pt'}",
                                   "env.world_model.proprio=state"])
    env = make_world_model_env(more_cfg.env, 2, 2, 7, 12, "cpu")
    env.reset_group(0, 3)
    with torch.no_grad():
        want = after.state_model.proprio(torch.from_numpy(env.starts[3].sim_state)[None])
    np.testing.assert_allclose(env.observe(np.arange(2)).states, want.repeat(2, 1).numpy(),
                               rtol=1e-5, atol=1e-6)
    wider = more + [f"run.log_dir={tmp_path / 'wider'}", "world_model.state.hidden=64"]
    with pytest.raises(ConfigError, match="init's state model"):
        wm_train.run(load_config(ROOT / "configs/robosuite_lift_world_model.yaml", wider))


def test_reset_states_need_recordings_that_keep_them(tmp_path):
    frames = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    demo = Demo("push right", np.zeros((3, 7), np.float32), np.zeros(3, np.float32),
                np.eye(3, dtype=bool)[2], np.zeros(3, bool), frames, np.zeros((3, 8), np.float32))
    write_file(tmp_path / "bare" / "a.hdf5", demo, file_attributes(demo, "Lift", {}, "p"), 0)
    assert reset_frames([tmp_path / "bare"], SIZE)[0].sim_state is None
    with pytest.raises(ValueError, match="simulator states"):
        reset_frames([tmp_path / "bare"], SIZE, sim_states=True)
    steps = np.array([{"image": frames[0], "instruction": "push right"}], dtype=object)
    np.save(tmp_path / "traj0.npy", steps, allow_pickle=True)
    with pytest.raises(ValueError, match="no simulator state"):
        reset_frames([tmp_path], SIZE, sim_states=True)


def test_the_env_hands_the_policy_the_proprioception_of_its_predicted_state(judge):
    reader = StateModel(2, 7, hidden=64, layers=2, proprio_dim=8)
    reader.load_state_dict(judge.state_dict(), strict=False)  # the judge's dynamics
    with torch.no_grad():
        reader.q_std.fill_(2.0)  # a head that is not the identity's scale
    env = WorldModelVectorEnv(2, 2, _model(0.0, reader), _starts(), 12, judge="state",
                              proprio="state")
    env.reset_group(0, 0)
    with torch.no_grad():
        at_reset = reader.proprio(torch.zeros(1, 2)).numpy()
    np.testing.assert_allclose(env.observe(np.arange(2)).states, np.repeat(at_reset, 2, 0),
                               rtol=1e-5, atol=1e-6)
    actions = np.zeros((2, 4, 7), np.float32)
    actions[:, :, 0] = 1.0
    env.step_chunk(np.arange(2), actions)
    with torch.no_grad():
        moved = reader.proprio(env.sim[:, 0]).numpy()  # one member's
    assert np.abs(env.sim[:, 0, 0].numpy()).min() > 0.2  # it was pushed: the state moved
    np.testing.assert_allclose(env.observe(np.arange(2)).states, moved, rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved, at_reset)
    zeros = WorldModelVectorEnv(2, 2, _model(0.0, reader), _starts(), 12, judge="state")
    zeros.reset_group(0, 0)
    assert not zeros.observe(np.arange(2)).states.any()  # RLinf's: no proprioception
    with pytest.raises(ValueError, match="state.proprio=true"):
        WorldModelVectorEnv(2, 2, _model(0.0, judge), _starts(), 12, proprio="state")
    with pytest.raises(ValueError, match="state.proprio=true"):  # a head of another size
        WorldModelVectorEnv(2, 2, _model(0.0, reader), _starts(), 12, state_dim=7,
                            proprio="state")
