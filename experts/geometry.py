"""Geometry on privileged simulator state: bodies' collision boxes, grasp yaw, orientations.

Shapes are read from MuJoCo's own per-geom bounding boxes (``model.geom_aabb``, in each
geom's frame) placed at the geoms' current poses, so every object of every task is
measured the same way and nothing depends on hand-entered sizes or coordinates. World
boxes are ``[G, 2, 3]`` arrays of (low, high) corners; the functions below take plain
arrays so that the controller can be tested without a simulator.
"""

from __future__ import annotations

import itertools

import mujoco
import numpy as np

_SIGNS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))  # a box's 8 corners
_ROUND = (mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_CAPSULE,
          mujoco.mjtGeom.mjGEOM_CYLINDER)
_RIM = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)  # points on a round geom's rims


def _local_points(model, geom: int) -> np.ndarray:
    """24 points in the geom's frame whose hull bounds it: its box's corners (repeated),
    or for a round geom two rims of 12, so that its width is the same at every yaw."""
    if model.geom_type[geom] in _ROUND:
        radius, half = model.geom_size[geom][0], model.geom_aabb[geom][5]
        rim = np.stack([radius * np.cos(_RIM), radius * np.sin(_RIM)], 1)
        return np.concatenate([np.c_[rim, np.full(12, -half)], np.c_[rim, np.full(12, half)]])
    aabb = model.geom_aabb[geom]  # centre and half sizes in the geom's frame
    return np.tile(aabb[:3] + _SIGNS * aabb[3:], (3, 1))


class BodyShape:
    """The collision geoms of a body and its descendants, read at their current poses."""

    def __init__(self, model, data, body_id: int):
        inside = {body_id}
        for b in range(body_id + 1, model.nbody):  # MuJoCo numbers children after parents
            if model.body_parentid[b] in inside:
                inside.add(b)
        collides = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
        self.geoms = np.flatnonzero(np.isin(model.geom_bodyid, list(inside)) & collides)
        if not len(self.geoms):
            raise ValueError(f"body {body_id} has no collision geometry")
        self._local = np.stack([_local_points(model, g) for g in self.geoms])  # [G,24,3]
        self._centre, self._half = model.geom_aabb[self.geoms, :3], model.geom_aabb[self.geoms, 3:]
        self.data, self.body_id = data, body_id

    def corners(self) -> np.ndarray:
        """Points bounding every geom, in the world, [G,24,3]."""
        rot = self.data.geom_xmat[self.geoms].reshape(-1, 3, 3)
        at = self.data.geom_xpos[self.geoms][:, None]
        return np.einsum("gij,gkj->gki", rot, self._local) + at

    def boxes(self) -> np.ndarray:
        """World-aligned boxes of the geoms, [G,2,3] (low, high)."""
        c = self.corners()
        return np.stack([c.min(1), c.max(1)], 1)

    def distance(self, points: np.ndarray) -> float:
        """The smallest distance from any of ``points`` [P,3] to any geom's own (turned)
        box: how much room a finger at those points has."""
        rot = self.data.geom_xmat[self.geoms].reshape(-1, 3, 3)
        centre = self.data.geom_xpos[self.geoms] + np.einsum("gij,gj->gi", rot, self._centre)
        local = np.einsum("gji,gpj->gpi", rot, points[None] - centre[:, None])  # [G,P,3]
        outside = local - np.clip(local, -self._half[:, None], self._half[:, None])
        return float(np.linalg.norm(outside, axis=-1).min())

    def anchor(self) -> np.ndarray:
        """The body's own position: what benchmarks test goals on (a copy)."""
        return self.data.xpos[self.body_id].copy()


def support_height(boxes: np.ndarray, xy: np.ndarray) -> float:
    """The highest top among ``boxes`` whose footprint holds ``xy`` (-inf if none):
    the floor of a bin or basket at its centre, a plate's surface."""
    inside = np.all((boxes[:, 0, :2] <= xy) & (xy <= boxes[:, 1, :2]), axis=1)
    return float(boxes[inside, 1, 2].max()) if inside.any() else -np.inf


def corridor_top(boxes: np.ndarray, start: np.ndarray, end: np.ndarray,
                 radius: float) -> float:
    """The highest top among ``boxes`` within ``radius`` (xy) of the segment start-end
    (-inf if none): what a carried object must pass over."""
    if not len(boxes):
        return -np.inf
    steps = max(2, int(np.linalg.norm(end - start) / 0.01) + 1)
    path = start[None] + np.linspace(0.0, 1.0, steps)[:, None] * (end - start)[None]  # [S,2]
    near = np.clip(path[:, None], boxes[None, :, 0, :2], boxes[None, :, 1, :2])  # [S,G,2]
    hit = (np.linalg.norm(path[:, None] - near, axis=-1) <= radius).any(0)
    return float(boxes[hit, 1, 2].max()) if hit.any() else -np.inf


def yaw_widths(points_xy: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """The points' extent along each closing axis of ``yaws``: what the fingers must
    span at that yaw, [Y]."""
    along = points_xy @ np.stack([np.cos(yaws), np.sin(yaws)])  # [N,Y]
    return along.max(0) - along.min(0)


def down_rotation(yaw: float) -> np.ndarray:
    """The gripper pointing straight down with its closing (x) axis at ``yaw``, [3,3]
    with the axes as columns."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def yaw_of(rot: np.ndarray) -> float:
    """The heading of a rotation's x (closing) axis in the horizontal plane."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def rotation_error(goal: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The world-frame axis-angle vector turning ``current`` into ``goal`` (the
    shortest way): what robosuite's OSC_POSE takes as a rotation delta."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (goal @ current.T).reshape(-1))  # (w, x, y, z)
    if quat[0] < 0:
        quat = -quat
    sin_half = np.linalg.norm(quat[1:])
    if sin_half < 1e-9:
        return np.zeros(3)
    return quat[1:] / sin_half * 2.0 * np.arctan2(sin_half, quat[0])
