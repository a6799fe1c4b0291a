"""Cameras chunkrl adds to robosuite's table scenes, and rendering recorded episodes
from a camera they were not recorded with.

A Lift lift is 4 cm; from the 64 x 64 main camera (``agentview``, above and in front)
that is a few pixels, and a cube held between the fingers on the table looks like one
lifted (RESULTS.md, "RL in a world model"). ``table_front`` looks at the cube from
the table's front edge, 7 cm above its top, level: the gap under a lifted cube is
a dozen pixels at 64 x 64. A world model can generate such a view for its success model
to read, while the policy keeps its own cameras (``world_model.cameras``).

MuJoCo (2.3) cannot add a camera to a compiled model, so an added camera takes over an
existing fixed camera's pose (``base``): robosuite's arena ``sideview``, which no chunkrl
policy reads. Recordings keep every simulator state (``states``, MuJoCo's flattened
time/qpos/qvel), so any camera can be rendered for them afterwards
(:func:`render_states`; ``scripts/render_camera.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraPose:
    """A fixed world camera: position (m), orientation quaternion (w, x, y, z: MuJoCo's
    convention, the camera looks along its -z with +y up), vertical field of view (deg),
    and the arena camera whose slot it takes."""

    pos: tuple[float, float, float]
    quat: tuple[float, float, float, float]
    fovy: float
    base: str = "sideview"


# Camera axes x = world y, y = world z (up), z = world x: it looks along -x, level.
_LOOK_BACK_LEVEL = (0.5, 0.5, 0.5, 0.5)
TABLE_TOP_Z = 0.8  # robosuite's table arenas (Lift, Stack): table_offset z + half height

CAMERAS = {
    "table_front": CameraPose((0.35, 0.0, TABLE_TOP_Z + 0.07), _LOOK_BACK_LEVEL, 50.0),
}


def place_camera(model, renderer, camera: str) -> int:
    """Move ``CAMERAS[camera]``'s base camera of the compiled MuJoCo ``model`` to its
    pose; returns the camera id to render (call ``mj_forward`` before rendering)."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; chunkrl adds: {sorted(CAMERAS)}")
    pose = CAMERAS[camera]
    cid = renderer.camera_id(pose.base)
    model.cam_pos[cid] = pose.pos
    model.cam_quat[cid] = pose.quat
    model.cam_fovy[cid] = pose.fovy
    return cid


def render_states(sim, renderer, camera_id: int, states: np.ndarray) -> np.ndarray:
    """uint8 [T,H,W,3] in OpenGL rows (as recordings hold images): the camera's view of
    each flattened simulator state [T,S] (robosuite's ``sim.set_state_from_flattened``)."""
    out = np.empty((len(states), renderer.size, renderer.size, 3), np.uint8)
    for t, state in enumerate(np.asarray(states, np.float64)):
        sim.set_state_from_flattened(state)
        sim.forward()
        renderer.render(camera_id, out[t])
    return out
