"""Demonstrations on disk, in LIBERO's HDF5 layout, and in memory (:class:`Demo`).

A file holds ``data`` (attributes ``env_name``, ``env_args`` and ``problem_info`` as JSON,
``bddl_file_name``, ``macros_image_convention``, ``num_demos``, ``total``, ``tag``) and one
group ``data/demo_N`` per episode; step t of a demo is the observation before action t,
action t and what it gave::

    data/demo_N/actions            [T,D] float64   executed actions, env units (gripper -1 open)
    data/demo_N/rewards            [T]             reward of each step
    data/demo_N/dones              [T]   uint8     1 where the episode ended
    data/demo_N/states             [T,S] float64   full simulator state (MuJoCo), if any
    data/demo_N/robot_states       [T,9] float64   gripper qpos, eef pos, eef quat, if any
    data/demo_N/obs/agentview_rgb  [T,H,W,3] uint8 main camera, OpenGL rows (upside down)
    data/demo_N/obs/eye_in_hand_rgb                wrist camera, likewise, if any
    data/demo_N/obs/<camera>_rgb                   a camera chunkrl adds, likewise
    data/demo_N/obs/ee_states      [T,6]           eef position + axis-angle
    data/demo_N/obs/gripper_states [T,2]           finger positions
    data/demo_N/obs/{ee_pos,ee_ori,joint_states}   as LIBERO's
    data/demo_N/final_obs/agentview_rgb [1,H,W,3]  main camera after the last action
    data/demo_N/final_obs/<view>                   the other views after it, if recorded

chunkrl adds ``success`` [T] (the task achieved after step t), ``final_obs`` (the frame
the last action led to: a world model learns from it, and an episode that ends at
success shows that success only there), ``obs/states`` (the state
vector of envs without an end-effector, e.g. the synthetic task) and per-demo attributes
``init_state_id``, ``task_id``, ``episode_id``, ``success``, ``source``. Readers of
LIBERO's own files (which have none of these) still work: the policy state is
``ee_states ++ gripper_states`` (LIBERO's 8-D state) and success is a positive reward.
OpenVLA's regenerated ``*_no_noops`` files carry no attributes: their instruction is the
file name's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from envs.robot_io import orient_batch

TAG = "chunkrl-v1"
IMAGE_CONVENTION = "opengl"  # LIBERO's: rows bottom first, as MuJoCo's buffer
MAIN, WRIST = "agentview_rgb", "eye_in_hand_rgb"


def view_key(camera: str) -> str:
    """The dataset under ``obs/`` holding a camera's frames: ``main`` and ``wrist`` are
    LIBERO's; a camera chunkrl adds (``env.record_cameras``, or rendered afterwards by
    ``scripts/render_camera.py``) is ``<camera>_rgb``."""
    return {"main": MAIN, "wrist": WRIST}.get(camera, f"{camera}_rgb")


@dataclass
class Demo:
    """One episode, every simulator step. Images are as the policy sees them (in the
    env's ``orientation``: ``upright`` or ``libero``); files hold them in OpenGL rows."""

    instruction: str
    actions: np.ndarray                  # float32 [T,D]
    rewards: np.ndarray                  # float32 [T]
    dones: np.ndarray                    # bool [T]
    success: np.ndarray                  # bool [T]
    main_images: np.ndarray              # uint8 [T,H,W,3]
    states: np.ndarray                   # float32 [T,S]: the policy's state vector
    wrist_images: Optional[np.ndarray] = None
    orientation: str = "upright"
    extras: dict = field(default_factory=dict)  # sim_states, robot_states, joint_states...
    init_state_id: int = -1
    task_id: int = -1
    episode_id: int = -1
    source: str = ""
    final_main_image: Optional[np.ndarray] = None  # uint8 [H,W,3] after the last action
    views: dict = field(default_factory=dict)  # other cameras' uint8 [T,H,W,3], by name
    final_views: dict = field(default_factory=dict)  # wrist's and views' [H,W,3] after it

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def succeeded(self) -> bool:
        """Whether the task was achieved at some step."""
        return bool(self.success.any())


def slug(instruction: str) -> str:
    """A file-name form of an instruction: ``pick_up_the_black_bowl``."""
    return re.sub(r"[^a-z0-9]+", "_", instruction.lower()).strip("_")[:120] or "task"


def instruction_from_filename(path: Path) -> str:
    """OpenVLA's regenerated files name the task: ``pick_up_the_bowl_demo.hdf5``."""
    stem = re.sub(r"(_demo)?(_no_noops)?$", "", path.stem)
    return stem.replace("_", " ")


def file_attributes(demo: Demo, env_name: str, env_args: dict, problem_name: str,
                    bddl_file: str = "") -> dict:
    """The ``data`` group's attributes of a one-demo file, as LIBERO writes them."""
    return {
        "env_name": env_name,
        "env_args": json.dumps(env_args),
        "problem_info": json.dumps({"problem_name": problem_name,
                                    "language_instruction": demo.instruction}),
        "bddl_file_name": bddl_file,
        "macros_image_convention": IMAGE_CONVENTION,
        "num_demos": 1,
        "total": len(demo),
        "tag": TAG,
    }


def write_demo(group, demo: Demo, compression: int) -> None:
    """Write ``demo`` into the (empty) h5py group ``data/demo_N``."""
    gzip = {"compression": "gzip", "compression_opts": compression} if compression else {}
    group.create_dataset("actions", data=demo.actions.astype(np.float64))
    group.create_dataset("rewards", data=demo.rewards.astype(np.float32))
    group.create_dataset("dones", data=demo.dones.astype(np.uint8))
    group.create_dataset("success", data=demo.success.astype(np.uint8))
    obs = group.create_group("obs")
    views = [(MAIN, demo.main_images), (WRIST, demo.wrist_images)]
    for name, images in views + [(view_key(c), v) for c, v in demo.views.items()]:
        if images is not None:
            h, w = images.shape[1:3]
            obs.create_dataset(name, data=orient_batch(images, demo.orientation),
                               chunks=(1, h, w, 3), **gzip)
    if demo.final_main_image is not None:
        final = {MAIN: demo.final_main_image} | {view_key(c): v
                                                 for c, v in demo.final_views.items()}
        group_final = group.create_group("final_obs")
        for name, image in final.items():
            h, w = image.shape[:2]
            group_final.create_dataset(name, data=orient_batch(image[None], demo.orientation),
                                       chunks=(1, h, w, 3), **gzip)
    extras = dict(demo.extras)
    for name in ("states", "robot_states"):  # LIBERO keeps these beside obs/
        if name in extras:
            group.create_dataset(name, data=extras.pop(name))
    if "ee_states" not in extras:  # no end-effector: the policy's state vector itself
        obs.create_dataset("states", data=demo.states)
    for name, values in extras.items():
        obs.create_dataset(name, data=values)
    group.attrs["num_samples"] = len(demo)
    if "states" in demo.extras:
        group.attrs["init_state"] = demo.extras["states"][0]
    for name in ("init_state_id", "task_id", "episode_id"):
        group.attrs[name] = int(getattr(demo, name))
    group.attrs["success"] = demo.succeeded
    group.attrs["source"] = demo.source


def policy_states(obs) -> np.ndarray:
    """The policy's state vector float32 [T,S] from a demo's ``obs`` group: ``obs/states``
    where chunkrl wrote it, else LIBERO's end-effector pose and finger positions."""
    if "states" in obs:
        return np.asarray(obs["states"], np.float32)
    return np.concatenate([np.asarray(obs["ee_states"], np.float32),
                           np.asarray(obs["gripper_states"], np.float32)], axis=1)


def read_demo(group, instruction: str, orientation: str, cameras: tuple[str, ...]) -> Demo:
    """A :class:`Demo` from an h5py ``data/demo_N`` group; images turned from OpenGL rows
    into ``orientation``. ``cameras``: which of "main", "wrist" and added cameras
    (:func:`view_key`) to load; a missing one raises KeyError."""
    obs = group["obs"]
    actions = np.asarray(group["actions"], np.float32)
    n = len(actions)
    rewards = np.asarray(group["rewards"], np.float32).reshape(-1)
    dones = np.asarray(group["dones"]).astype(bool).reshape(-1)
    success = (np.asarray(group["success"]).astype(bool).reshape(-1) if "success" in group
               else rewards > 0)
    states = policy_states(obs)
    main = orient_batch(np.asarray(obs[MAIN]), orientation) if "main" in cameras else None
    wrist = (orient_batch(np.asarray(obs[WRIST]), orientation)
             if "wrist" in cameras and WRIST in obs else None)
    if "wrist" in cameras and wrist is None:
        raise KeyError(f"no obs/{WRIST} (wrist camera) in {group.name}")
    views = {}
    for camera in cameras:
        if camera not in ("main", "wrist"):
            if view_key(camera) not in obs:
                raise KeyError(f"no obs/{view_key(camera)} ({camera} camera) in {group.name}:"
                               f" render it (scripts/render_camera.py --camera {camera})")
            views[camera] = orient_batch(np.asarray(obs[view_key(camera)]), orientation)
    final, final_views = None, {}
    if "main" in cameras and "final_obs" in group and MAIN in group["final_obs"]:
        final_obs = group["final_obs"]
        final = orient_batch(np.asarray(final_obs[MAIN]), orientation)[0]
        final_views = {c: orient_batch(np.asarray(final_obs[view_key(c)]), orientation)[0]
                       for c in cameras if c != "main" and view_key(c) in final_obs}
    lengths = {len(a) for a in (rewards, dones, success, states) if a is not None}
    lengths |= {len(a) for a in (main, wrist, *views.values()) if a is not None}
    if lengths != {n}:
        raise ValueError(f"{group.name}: steps disagree between datasets "
                         f"(actions {n}, others {sorted(lengths)})")
    attrs = group.attrs
    # the simulator's own state, where kept (the writer puts extras' "states" back there)
    extras = {"states": np.asarray(group["states"])} if "states" in group else {}
    return Demo(instruction=instruction, actions=actions, rewards=rewards, dones=dones,
                success=success, main_images=main, states=states, wrist_images=wrist,
                orientation=orientation, extras=extras,
                init_state_id=int(attrs.get("init_state_id", -1)),
                task_id=int(attrs.get("task_id", -1)),
                episode_id=int(attrs.get("episode_id", -1)),
                source=str(attrs.get("source", "")), final_main_image=final, views=views,
                final_views=final_views)
