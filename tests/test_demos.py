"""Demonstration files: chunkrl's writer and reader, LIBERO's own layout, bad files."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from demos import Demo, DemoWriter, read_demos
from demos.layout import file_attributes
from demos.stats import dataset_statistics, summary
from demos.writer import write_file


def _demo(n=5, size=8, orientation="upright", seed=0, success=True, wrist=True) -> Demo:
    rng = np.random.default_rng(seed)

    def img():
        return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)

    flags = np.zeros(n, bool)
    flags[-1] = success
    return Demo(instruction="pick up the black bowl", actions=rng.uniform(-1, 1, (n, 7)).astype(
        np.float32), rewards=flags.astype(np.float32), dones=np.eye(n, dtype=bool)[-1],
        success=flags, main_images=img(), states=rng.normal(size=(n, 8)).astype(np.float32),
        wrist_images=img() if wrist else None, orientation=orientation,
        extras={"states": rng.normal(size=(n, 30)), "ee_states": rng.normal(size=(n, 6)),
                "gripper_states": rng.normal(size=(n, 2))},
        init_state_id=3105, task_id=3, episode_id=77, source="expert",
        final_main_image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("orientation", ["upright", "libero"])
def test_round_trip_through_a_file(tmp_path, orientation):
    demo = _demo(orientation=orientation)
    demo.states = np.concatenate([demo.extras["ee_states"], demo.extras["gripper_states"]],
                                 1).astype(np.float32)
    path = write_file(tmp_path / "a" / "ep.hdf5", demo,
                      file_attributes(demo, "Lift", {"x": 1}, "lift"), compression=1)
    assert not list(tmp_path.rglob(".*"))  # the temporary file was renamed away
    (got,), report = read_demos([tmp_path], orientation, ("main", "wrist"))
    assert report.files == 1 and report.demos == 1 and not report.bad
    for name in ("actions", "rewards", "dones", "success", "main_images", "wrist_images",
                 "final_main_image"):
        np.testing.assert_array_equal(getattr(got, name), getattr(demo, name))
    np.testing.assert_allclose(got.states, demo.states, rtol=1e-6)
    assert (got.instruction, got.init_state_id, got.task_id, got.episode_id, got.source) == \
        (demo.instruction, 3105, 3, 77, "expert")
    with h5py.File(path) as f:  # the file is in LIBERO's convention: OpenGL rows
        raw = f["data/demo_0/obs/agentview_rgb"][0]
        flip = raw[::-1] if orientation == "upright" else raw[::-1, ::-1]
        np.testing.assert_array_equal(flip, demo.main_images[0])
        assert f["data"].attrs["macros_image_convention"] == "opengl"
        np.testing.assert_array_equal(f["data/demo_0"].attrs["init_state"],
                                      demo.extras["states"][0])
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == \
            demo.instruction


def _libero_file(path, instruction="put the bowl on the plate", attrs=True, n_demos=3):
    """A small file as LIBERO's scripts/create_dataset.py writes it (no chunkrl extras)."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if attrs:
            data.attrs["problem_info"] = json.dumps({"language_instruction": instruction,
                                                     "problem_name": "x", "domain_name": "y"})
            data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
            data.attrs["macros_image_convention"] = "opengl"
            data.attrs["num_demos"] = n_demos
        for k in (2, 10, 1)[:n_demos]:  # written out of order; read in numeric order
            n = 4 + k
            g = data.create_group(f"demo_{k}")
            g.create_dataset("actions", data=np.full((n, 7), float(k)))
            rewards = np.zeros(n, np.uint8)
            rewards[-1] = 1
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=rewards)
            g.create_dataset("states", data=rng.normal(size=(n, 40)))
            g.create_dataset("robot_states", data=rng.normal(size=(n, 9)))
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=rng.integers(0, 255, (n, 16, 16, 3),
                                                                  dtype=np.uint8))
            obs.create_dataset("eye_in_hand_rgb", data=rng.integers(0, 255, (n, 16, 16, 3),
                                                                    dtype=np.uint8))
            obs.create_dataset("ee_states", data=np.full((n, 6), 0.5))
            obs.create_dataset("gripper_states", data=np.full((n, 2), 0.04))
            obs.create_dataset("joint_states", data=np.zeros((n, 7)))


def test_libero_released_layout_reads_unchanged(tmp_path):
    path = tmp_path / "libero_spatial" / "put_the_bowl_on_the_plate_demo.hdf5"
    path.parent.mkdir()
    _libero_file(path)
    demos, report = read_demos([path], "libero", ("main", "wrist"), image_size=8)
    assert [len(d) for d in demos] == [5, 6, 14]  # demo_1, demo_2, demo_10
    d = demos[0]
    assert d.instruction == "put the bowl on the plate" and d.succeeded
    np.testing.assert_array_equal(d.actions, np.full((5, 7), 1.0, np.float32))
    np.testing.assert_allclose(d.states, np.tile([0.5] * 6 + [0.04] * 2, (5, 1)), rtol=1e-6)
    assert d.main_images.shape == (5, 8, 8, 3) and d.wrist_images.shape == (5, 8, 8, 3)
    with h5py.File(path) as f:  # libero orientation = the OpenGL rows turned 180 degrees
        raw = f["data/demo_1/obs/agentview_rgb"][0]
    full, _ = read_demos([path], "libero", ("main",))
    np.testing.assert_array_equal(full[0].main_images[0], raw[::-1, ::-1])


def test_openvla_regenerated_files_take_the_instruction_from_their_name(tmp_path):
    path = tmp_path / "pick_up_the_black_bowl_demo.hdf5"
    _libero_file(path, attrs=False, n_demos=1)
    (d,), _ = read_demos([path], "libero")
    assert d.instruction == "pick up the black bowl"


def test_bad_files_are_reported_by_path_and_the_rest_read(tmp_path):
    demo = _demo(wrist=False)
    write_file(tmp_path / "good.hdf5", demo, file_attributes(demo, "e", {}, "p"), 0)
    truncated = tmp_path / "truncated.hdf5"
    data = (tmp_path / "good.hdf5").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file at all")
    (tmp_path / ".ep_7.hdf5.tmp").write_bytes(data[:100])  # a writer that died mid-way
    missing = tmp_path / "missing_obs.hdf5"
    with h5py.File(missing, "w") as f:
        f.create_group("data/demo_0").create_dataset("actions", data=np.zeros((3, 7)))
    demos, report = read_demos([tmp_path])
    assert len(demos) == 1 and report.files == 1
    bad = {os.path.basename(p): why for p, why in report.bad}
    assert set(bad) == {"truncated.hdf5", "garbage.h5", ".ep_7.hdf5.tmp", "missing_obs.hdf5"}
    assert "incomplete" in bad[".ep_7.hdf5.tmp"]
    assert "4 unreadable" in report.summary() and str(truncated) in report.summary()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_demos([tmp_path / "nope"])


def test_writer_thread_writes_every_episode_once(tmp_path):
    writer = DemoWriter(tmp_path, lambda d: file_attributes(d, "e", {}, "p"), 1, max_pending=2)
    for k in range(6):
        demo = _demo(seed=k, wrist=False)
        demo.episode_id, demo.init_state_id = k, 100 + k % 5  # state 100 twice
        writer.put(demo)
    writer.close()
    assert writer.written == 6 and writer.failed == 0
    demos, report = read_demos([tmp_path])
    # a second episode from state 100 (a group's) is kept beside the first
    assert sorted(d.episode_id for d in demos) == [0, 1, 2, 3, 4, 5] and not report.bad
    assert sorted(p.name for p in writer.paths)[:2] == ["state_000100.hdf5",
                                                        "state_000100_1.hdf5"]


def test_dataset_statistics_by_hand():
    actions = [np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[4.0, 5.0]])]
    stats = dataset_statistics(actions, [np.zeros((2, 3)), np.ones((1, 3))], "k")["k"]
    assert stats["action"]["mean"] == [2.0, 3.0] and stats["action"]["min"] == [0.0, 1.0]
    assert stats["action"]["max"] == [4.0, 5.0] and stats["action"]["mask"] == [True, False]
    assert stats["num_transitions"] == 3 and stats["num_trajectories"] == 2
    q = summary(np.arange(101.0)[:, None])
    assert q["q01"] == [1.0] and q["q99"] == [99.0]
