"""A pick-and-place phase controller on privileged state, shared by every scripted task.

One controller drives one env: above the object, down to the grasp, close until the
fingers stop, lift, carry so that the *object* (not the hand) ends over the target,
lower it onto the target's surface, open, and back off. Every goal is re-read from the
simulator at each step (closed loop), so action noise or a nudged object only delays it;
a grasp that comes up empty, an object dropped on the way, or one that lands off target
sends it back to the approach.

Actions follow robosuite's OSC_POSE: position = clip(gain x error, +-1), where 1 moves
the arm controller's own goal 5 cm, so the default gain 20 sets that goal on the target
when within 5 cm and saturates beyond; rotation = the axis-angle error x ``rot_gain``
(1 = 0.5 rad: 2 sets the goal on the target orientation), keeping the gripper pointing
down at the grasp's yaw; gripper -1 opens, +1 closes.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable

import numpy as np
from typing_extensions import override

from experts.base import Expert
from experts.geometry import corridor_top, down_rotation, rotation_error
from experts.grasping import grasp_point, plan_grasp
from experts.scene import Scene

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.05  # above the object's top before descending
CLEARANCE = 0.03  # between a carried object's bottom and whatever it passes over
RETREAT = 0.08  # straight up after letting go
LOST = 0.02  # the hand this far off the object's bounding box: it is no longer held
EMPTY = 0.003  # a finger opening below this holds nothing (closed fingers: 0.002)


class Phase(enum.Enum):
    """The controller's phases, in their usual order."""

    APPROACH = "approach"
    DESCEND = "descend"
    CLOSE = "close"
    LIFT = "lift"
    CARRY = "carry"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"
    DONE = "done"
    RETRY = "retry"


class PickPlaceController:
    """Closed-loop pick and place for one env; :meth:`act` gives each step's action."""

    def __init__(self, scene: Scene, gain: float = 20.0, rot_gain: float = 2.0):
        self.scene, self.gain, self.rot_gain = scene, gain, rot_gain
        self.attempts = 0  # grasps tried (a retry starts a new one)
        self.phase, self.steps = Phase.APPROACH, 0
        self.hold = np.zeros(3)  # a position kept through a phase
        self.trace: deque = deque(maxlen=6)  # a scalar watched for stalls, this phase
        self.failed: list = []  # grasps that missed, tried again only after the others
        self.closed_on = scene.open_width  # the finger opening when the last close ended
        self._plan_grasp()

    # --- the action --------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """The next 7-D action (float32) from the scene's current state."""
        pos, rot, width = self.scene.gripper()
        goal, grip = getattr(self, "_" + self.phase.value)(pos, width)
        self.steps += 1
        action = np.empty(7, np.float32)
        action[:3] = np.clip(self.gain * (goal - pos), -1.0, 1.0)
        turn = rotation_error(down_rotation(self.yaw), rot)
        action[3:6] = np.clip(self.rot_gain * turn, -1.0, 1.0)
        action[6] = grip
        return action

    def _enter(self, phase: Phase, hold=None) -> None:
        self.phase, self.steps = phase, 0
        self.trace.clear()
        if hold is not None:
            self.hold = np.array(hold, float)

    def _stalled(self, value: float, eps: float = 0.002) -> bool:
        """Whether ``value`` (falling as the phase progresses) stopped falling."""
        self.trace.append(value)
        return len(self.trace) == self.trace.maxlen and self.trace[0] - value < eps

    # --- grasp geometry ----------------------------------------------------------------
    def _plan_grasp(self) -> None:
        self.grasp = plan_grasp(self.scene, self.failed)
        self.yaw = self.grasp.yaw

    def _grasp_point(self) -> tuple[np.ndarray, float]:
        """Where the point between the fingertips goes for the grasp, and the object's top."""
        return grasp_point(self.scene.object_corners(), self.scene.grasp, self.grasp)

    def _bottom(self) -> float:
        return float(self.scene.object_corners()[:, 2].min())

    # --- phases: each returns (position goal, gripper) ---------------------------------
    def _approach(self, pos, width):
        grasp, top = self._grasp_point()
        goal = np.array([grasp[0], grasp[1], top + HOVER])
        off = np.linalg.norm(goal[:2] - pos[:2])
        # Down once above the grasp; or once as near as the arm gets, if near enough: at
        # the edge of its reach, a lower hand reaches further.
        if (off < 0.01 and abs(goal[2] - pos[2]) < 0.03) or (self._stalled(off) and off < 0.03):
            self._enter(Phase.DESCEND)
        return goal, OPEN

    def _descend(self, pos, width):
        goal, _ = self._grasp_point()
        if np.linalg.norm(goal[:2] - pos[:2]) > 0.03:  # the object moved: line up again
            self._enter(Phase.APPROACH)
        elif pos[2] - goal[2] < 0.005 or self._stalled(pos[2]):
            self._enter(Phase.CLOSE, hold=[goal[0], goal[1], max(goal[2], pos[2])])
        return goal, OPEN

    def _close(self, pos, width):
        # Close until the fingers stop moving: on the object, or on nothing at all.
        self.trace.append(width)
        if (len(self.trace) >= 3 and abs(self.trace[-3] - width) < 5e-4) or self.steps > 30:
            self.closed_on = width
            self._start_lift(pos)
        return self.hold, CLOSE

    def _start_lift(self, pos) -> None:
        self._enter(Phase.LIFT, hold=pos)
        self.start_bottom = self._bottom()
        self.picked_at = self.scene.object_anchor()[:2]
        target, spec = self.scene.target(), self.scene.grasp
        self.carry_bottom = self.start_bottom + spec.lift
        if target is not None:
            pts = self.scene.object_corners()
            reach = 0.5 * np.linalg.norm(pts.max(0)[:2] - pts.min(0)[:2]) + CLEARANCE
            above = corridor_top(self.scene.obstacle_boxes(), self.picked_at,
                                 target.aim(self.picked_at), reach)
            self.carry_bottom = max(self.carry_bottom, above + CLEARANCE,
                                    target.clear_z + CLEARANCE)

    def _lost(self, pos, width) -> bool:
        """Whether the object has left the hand: the fingers closed on nothing, or the
        hand is off the object's bounding box (then: try again)."""
        pts = self.scene.object_corners()
        gap = np.linalg.norm(pos - np.clip(pos, pts.min(0), pts.max(0)))
        if gap > LOST or width < EMPTY:
            self._start_retry(pos)
            return True
        return False

    def _lift(self, pos, width):
        rise, bottom = pos[2] - self.hold[2], self._bottom()
        goal = np.array([self.hold[0], self.hold[1], pos[2] + self.carry_bottom - bottom])
        if self._lost(pos, width):
            return pos, OPEN
        if rise > 0.03 and bottom - self.start_bottom < 0.5 * rise:  # came up without it
            self._start_retry(pos)
            return pos, OPEN
        if self.scene.target() is not None and bottom > self.carry_bottom - 0.01:
            self._enter(Phase.CARRY)
        return goal, CLOSE

    def _over_target(self, pos, target, drop: float):
        """The hand's goal that puts the object ``drop`` below its carry height over
        the target, and the object's xy distance from the target now."""
        miss = target.aim(self.picked_at) - self.scene.object_anchor()[:2]
        z = pos[2] + self.carry_bottom - drop - self._bottom()
        return np.array([pos[0] + miss[0], pos[1] + miss[1], z]), float(np.linalg.norm(miss))

    def _carry(self, pos, width):
        target = self.scene.target()
        if self._lost(pos, width):
            return pos, OPEN
        goal, miss = self._over_target(pos, target, 0.0)
        # Lower once over the aim, or as near as the arm gets if that is inside the target
        # (the aim may lie at the edge of the arm's reach).
        if miss < 0.5 * target.tolerance or (
                self._stalled(miss) and target.holds(self.scene.object_anchor()[:2])):
            self._enter(Phase.LOWER)
        return goal, CLOSE

    def _lower(self, pos, width):
        target = self.scene.target()
        if self._lost(pos, width):
            return pos, OPEN
        rest = target.support_z + self.scene.grasp.release_gap
        goal, _ = self._over_target(pos, target, self.carry_bottom - rest)
        bottom = self._bottom()
        if not target.holds(self.scene.object_anchor()[:2]):
            # Drifted off the target: re-aim in the air (resting, the object would drag).
            goal[2] = max(goal[2], pos[2] + rest + HOVER / 2 - bottom)
            self.trace.clear()
        elif bottom - rest < 0.004 or self._stalled(bottom):
            self._enter(Phase.RELEASE, hold=pos)
        return goal, CLOSE

    def _release(self, pos, width):
        if width > self.scene.open_width - 0.01 or self.steps >= 12:
            self._enter(Phase.RETREAT, hold=self.hold + [0.0, 0.0, RETREAT])
        return self.hold, OPEN

    def _retreat(self, pos, width):
        if pos[2] > self.hold[2] - 0.02 or self.steps >= 20:
            target = self.scene.target()
            placed = (target.holds(self.scene.object_anchor()[:2])
                      and self._bottom() < target.support_z + 0.03)
            if placed:
                self._enter(Phase.DONE)
            else:
                self._start_retry(pos)
        return self.hold, OPEN

    def _done(self, pos, width):
        return self.hold, OPEN

    def _start_retry(self, pos) -> None:
        """Open and rise above the object, then approach it afresh."""
        self.attempts += 1
        if self.phase is Phase.LIFT and self.closed_on < EMPTY:
            self.failed.append(self.grasp)  # closed on nothing: try elsewhere
        top = self.scene.object_corners()[:, 2].max()
        self._enter(Phase.RETRY, hold=[pos[0], pos[1], max(pos[2], top + HOVER)])

    def _retry(self, pos, width):
        if (pos[2] > self.hold[2] - 0.02 and width > self.scene.open_width - 0.01) \
                or self.steps >= 20:
            self._plan_grasp()
            self._enter(Phase.APPROACH)
        return self.hold, OPEN


class PickPlaceExpert(Expert):
    """One :class:`PickPlaceController` per env slot of a MuJoCo vector env.

    ``scene_of`` turns a slot's simulator (``env.slots[e].sim_env``) into its
    :class:`Scene`; it is called at every reset, after the env's settle steps.
    """

    def __init__(self, env, scene_of: Callable[[object], Scene], **gains):
        self.env, self.scene_of, self.gains = env, scene_of, gains
        self.controllers: dict[int, PickPlaceController] = {}

    @override
    def reset(self, env_id: int) -> None:
        scene = self.scene_of(self.env.slots[env_id].sim_env)
        self.controllers[env_id] = PickPlaceController(scene, **self.gains)

    @override
    def act(self, env_ids: np.ndarray) -> np.ndarray:
        return np.stack([self.controllers[int(e)].act() for e in env_ids]).astype(np.float32)
