"""What a pick-and-place controller reads from one simulator: robot, object, obstacles, goal.

A :class:`SimScene` wraps one robosuite-based env (robosuite's own tasks, or the robosuite
env inside LIBERO's ``ControlEnv``) with the names a task adapter chose: which body to
move, which bodies are in the way, and a function giving the target now. Everything is
read from the simulator at the moment it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
from typing_extensions import override

from experts.geometry import BodyShape, yaw_of


@dataclass(frozen=True)
class GraspSpec:
    """How to take one kind of object.

    ``mode``: "center" grips across the object's narrowest horizontal width, at its
    middle; "rim" grips the wall of an open container wider than the gripper's opening
    (a bowl), one finger inside and one outside. ``depth``: how far below the object's
    top the point between the fingertips goes, at most ``max_depth_frac`` of its height.
    ``lift``: how far the object's bottom is raised before it moves sideways (for a
    lift-only task, the whole task). ``rim_inset``: the rim point's distance inside the
    container's outer edge. ``release_gap``: the height above its support at which the
    object is let go.
    """

    mode: str = "center"
    depth: float = 0.03
    max_depth_frac: float = 0.5
    lift: float = 0.08
    rim_inset: float = 0.012
    release_gap: float = 0.01

    def __post_init__(self):
        if self.mode not in ("center", "rim"):
            raise ValueError(f"unknown grasp mode {self.mode!r}; valid: center, rim")


@dataclass(frozen=True)
class Target:
    """Where the object goes, as of now.

    The object's anchor (its body position, what benchmarks test) must end in the box
    ``center`` +- ``half`` (xy; ``half`` 0 for a point), already shrunk so that the whole
    object fits there; the controller aims at the point of that box nearest to where the
    object was picked up (the shortest carry: far corners may be out of the arm's reach).
    ``support_z``: the surface it will rest on there; ``clear_z``: the top of the target
    (walls, rim) that a carried object must pass over; ``tolerance``: how far in xy outside
    the box still counts as placed.
    """

    center: np.ndarray
    half: np.ndarray
    support_z: float
    clear_z: float
    tolerance: float

    def aim(self, start_xy: np.ndarray) -> np.ndarray:
        """The point of the target box nearest to ``start_xy``."""
        return np.clip(start_xy, self.center - self.half, self.center + self.half)

    def holds(self, xy: np.ndarray) -> bool:
        """Whether ``xy`` is in the target box, give or take ``tolerance``."""
        return bool(np.all(np.abs(xy - self.center) <= self.half + self.tolerance))


class Scene(Protocol):
    """The readings a :class:`~experts.manipulation.PickPlaceController` needs."""

    grasp: GraspSpec
    home_yaw: float  # the gripper's heading at reset: grasp yaws stay near it
    base_xy: np.ndarray  # where the arm stands: what is far from it is hard to reach
    open_width: float  # the finger opening when fully open

    def gripper(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(position between the fingertips [3], rotation [3,3], finger opening)."""

    def object_corners(self) -> np.ndarray:
        """The moved object's collision boxes' corners, [N,3]."""

    def object_anchor(self) -> np.ndarray:
        """The moved object's body position [3]."""

    def obstacle_boxes(self) -> np.ndarray:
        """Every other object's collision boxes, [K,2,3]."""

    def clearance(self, points: np.ndarray) -> float:
        """The distance from ``points`` [P,3] to the nearest other object."""

    def target(self) -> Optional[Target]:
        """Where the object goes now; None for a task that only lifts it."""


class SimScene(Scene):
    """:class:`Scene` over a robosuite env (single arm) and the bodies a task names."""

    def __init__(self, sim_env, object_body: int, obstacle_bodies: Sequence[int],
                 target: Callable[[], Optional[Target]], grasp: GraspSpec):
        model, self._data = sim_env.sim.model._model, sim_env.sim.data._data
        robot = sim_env.robots[0]
        self._eef = robot.eef_site_id
        self._fingers = np.asarray(robot._ref_gripper_joint_pos_indexes)
        self.base_xy = np.array(robot.base_pos[:2], float)
        self.object = BodyShape(model, self._data, object_body)
        self.obstacles = [BodyShape(model, self._data, b) for b in obstacle_bodies]
        self._target, self.grasp = target, grasp
        _, rot, self.open_width = self.gripper()
        self.home_yaw = yaw_of(rot)

    @override
    def gripper(self) -> tuple[np.ndarray, np.ndarray, float]:
        q = self._data.qpos[self._fingers]
        # The two finger joints move in opposite directions: their difference is the gap.
        return (self._data.site_xpos[self._eef].copy(),
                self._data.site_xmat[self._eef].reshape(3, 3).copy(), float(q[0] - q[1]))

    @override
    def object_corners(self) -> np.ndarray:
        return self.object.corners().reshape(-1, 3)

    @override
    def object_anchor(self) -> np.ndarray:
        return self.object.anchor()

    @override
    def obstacle_boxes(self) -> np.ndarray:
        if not self.obstacles:
            return np.zeros((0, 2, 3))
        return np.concatenate([shape.boxes() for shape in self.obstacles])

    @override
    def clearance(self, points: np.ndarray) -> float:
        return min((shape.distance(points) for shape in self.obstacles), default=np.inf)

    @override
    def target(self) -> Optional[Target]:
        return self._target()
