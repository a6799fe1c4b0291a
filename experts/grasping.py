"""Where and how to grasp: the gripper's yaw, a rim grasp's side, the point between the fingers.

A grasp is planned from the object's current shape and its neighbours: every candidate
yaw (and side, for a rim) is scored by the room the open gripper would have there (a
hand that lands on a neighbour blocks the descent), how far beyond easy reach the hand
would be at the pick and at the place (near the edge of its reach the arm straightens
and stops short), the width across the fingers and the turn of the wrist. A candidate close to
one that already failed is tried again only once every other one has been.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from experts.geometry import down_rotation, yaw_widths
from experts.scene import GraspSpec, Scene

# The open Panda gripper of robosuite, sampled in its grip site's frame (x: the closing
# axis, z: pointing down, so the hand is at negative z). Measured from its collision
# geoms: fingers 3.2-6.8 cm either side of the site, from 1.2 cm below it to 4.9 cm above;
# the hand +-10.5 cm along the closing axis, +-3.2 cm across, from 2.6 cm above.
_FINGERS = [[s * a, b, c] for s in (-1, 1) for a in (0.035, 0.05, 0.065) for b in (-0.01, 0.01)
            for c in (0.01, -0.02, -0.045)]
_HAND = [[a, b, c] for a in np.linspace(-0.1, 0.1, 9) for b in (-0.03, 0.0, 0.03)
         for c in (-0.03, -0.07)]
GRIPPER_POINTS = np.array(_FINGERS + _HAND)
ROOM = 0.015  # more room around the gripper than this counts for nothing more
EASY_REACH = 0.65  # m from the arm's base (xy): beyond, every cm counts against a grasp
TURN_COST = 0.05  # per radian of wrist turn away from home, in metres of reach
MAX_WIDTH = 0.068  # what the open fingers (7.8 cm apart) take with a margin
SAME = 0.2  # radians: a candidate this near a failed one counts as the same


@dataclass(frozen=True)
class Grasp:
    """A planned grasp: the closing axis's yaw, and for a rim grasp the side (+-1) of
    the container, along that axis, where the fingers go (0 for a centre grasp)."""

    yaw: float
    side: float = 0.0

    def near(self, other: "Grasp") -> bool:
        """Whether ``other`` is essentially the same grasp (the gripper is symmetric:
        a centre grasp repeats every half turn)."""
        period = np.pi if self.side == 0 else 2 * np.pi
        turn = (self.yaw - other.yaw + period / 2) % period - period / 2
        return self.side == other.side and abs(turn) < SAME


def grasp_point(pts: np.ndarray, spec: GraspSpec, grasp: Grasp) -> tuple[np.ndarray, float]:
    """Where the point between the fingertips goes to take the object whose collision
    points are ``pts`` [N,3]; and the object's top."""
    axis = np.array([np.cos(grasp.yaw), np.sin(grasp.yaw)])
    normal = np.array([-axis[1], axis[0]])
    along, across = pts[:, :2] @ axis, pts[:, :2] @ normal
    mid = 0.5 * (along.max() + along.min()) * axis + 0.5 * (across.max() + across.min()) * normal
    if grasp.side:  # on the wall, just inside the container's outer edge
        mid = mid + grasp.side * (0.5 * (along.max() - along.min()) - spec.rim_inset) * axis
    bottom, top = pts[:, 2].min(), pts[:, 2].max()
    z = top - min(spec.depth, spec.max_depth_frac * (top - bottom))
    return np.array([mid[0], mid[1], z]), float(top)


def _candidates(scene: Scene, pts: np.ndarray) -> list[tuple[Grasp, float]]:
    """Every grasp worth scoring, with the width across its fingers."""
    home = scene.home_yaw
    if scene.grasp.mode == "rim":  # any side; the wrist turns in eighths
        return [(Grasp(home + turn * np.pi / 4, side), 0.0)
                for turn in (0, 1, -1, 2) for side in (1.0, -1.0)]
    yaws = home + np.arange(-np.pi / 2, np.pi / 2, np.pi / 36)  # half a turn: all axes
    widths = yaw_widths(pts[:, :2], yaws)
    fit = widths <= max(widths.min(), MAX_WIDTH)
    return [(Grasp(float(y)), float(w)) for y, w in zip(yaws[fit], widths[fit])]


def plan_grasp(scene: Scene, failed: Sequence[Grasp] = ()) -> Grasp:
    """The best grasp of the scene's object now (see the module docstring)."""
    pts = scene.object_corners()
    options = _candidates(scene, pts)
    fresh = [o for o in options if not any(o[0].near(f) for f in failed)] or options
    anchor, target = scene.object_anchor(), scene.target()
    place = target.aim(anchor[:2]) if target is not None else anchor[:2]
    best, choice = -np.inf, fresh[0][0]
    for grasp, width in fresh:
        point, _ = grasp_point(pts, scene.grasp, grasp)
        room = scene.clearance(point + GRIPPER_POINTS @ down_rotation(grasp.yaw).T)
        hand = point[:2] - anchor[:2]  # where the hand holds the object
        reach = sum(max(0.0, np.linalg.norm(at - scene.base_xy) - EASY_REACH)
                    for at in (point[:2], place + hand))
        score = (20 * min(room, ROOM) - reach - width
                 - TURN_COST * abs(grasp.yaw - scene.home_yaw))
        if score > best:
            best, choice = score, grasp
    return choice
