"""Scripted experts: the controller on a kinematic stand-in, then on the real simulators."""

from __future__ import annotations

import numpy as np
import pytest

from experts.geometry import corridor_top, down_rotation, rotation_error, support_height
from experts.grasping import plan_grasp
from experts.manipulation import Phase, PickPlaceController
from experts.scene import GraspSpec, Target


def box_points(center, half, yaw) -> np.ndarray:
    """The 8 corners of a box turned by ``yaw`` about z."""
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return (signs * half) @ rot.T + center


def test_rotation_error_is_the_yaw_difference():
    err = rotation_error(down_rotation(0.9), down_rotation(0.5))
    assert np.allclose(err, [0, 0, 0.4], atol=1e-9)
    assert np.allclose(rotation_error(down_rotation(0.3), down_rotation(0.3)), 0)


def test_support_and_corridor_heights():
    floor = [[-0.1, -0.1, 0.0], [0.1, 0.1, 0.02]]
    wall = [[0.1, -0.1, 0.0], [0.11, 0.1, 0.15]]
    boxes = np.array([floor, wall])
    assert support_height(boxes, np.zeros(2)) == pytest.approx(0.02)
    assert support_height(boxes, np.array([1.0, 1.0])) == -np.inf
    left, centre, right = np.array([-0.5, 0.0]), np.zeros(2), np.array([0.5, 0.0])
    assert corridor_top(boxes, left, centre, 0.02) == pytest.approx(0.02)  # floor only
    assert corridor_top(boxes, centre, right, 0.02) == pytest.approx(0.15)  # over the wall


def box_distance(points, lo, hi) -> float:
    return float(np.linalg.norm(points - np.clip(points, lo, hi), axis=1).min())


class KinematicScene:
    """A stand-in for a simulator: the hand moves 2 cm per unit action, fingers 1 cm a
    step; a box between closing fingers is held (unless ``drops`` says to let it fall
    once while carried) and falls onto the floor when released. ``neighbour``: an
    upright box standing next to the object."""

    def __init__(self, drops: int = 0, neighbour=None, grasp: GraspSpec = GraspSpec()):
        self.grasp, self.home_yaw, self.open_width = grasp, np.pi / 2, 0.08
        self.base_xy = np.array([-0.5, 0.0])
        self.pos, self.rot, self.width = np.array([0.0, 0.0, 0.3]), down_rotation(np.pi / 2), 0.08
        self.center, self.half = np.array([0.2, -0.1, 0.03]), np.array([0.04, 0.02, 0.03])
        self.obj_yaw, self.held, self.drops = 0.4, None, drops
        self.goal = Target(np.array([-0.1, 0.25]), np.zeros(2), 0.0, 0.1, 0.01)
        self.neighbour = neighbour

    def clearance(self, points):
        return np.inf if self.neighbour is None else box_distance(points, *self.neighbour)

    def gripper(self):
        return self.pos.copy(), self.rot.copy(), self.width

    def object_corners(self):
        return box_points(self.center, self.half, self.obj_yaw)

    def object_anchor(self):
        return self.center.copy()

    def obstacle_boxes(self):
        walls = [[[-0.2, 0.15, 0.0], [0.0, 0.35, 0.1]]]  # the target's
        return np.array(walls + ([] if self.neighbour is None else [self.neighbour]))

    def target(self):
        return self.goal

    def step(self, action: np.ndarray) -> None:
        self.pos = self.pos + 0.02 * action[:3]
        angle = 0.5 * action[5]  # only yaw matters here; the stand-in stays pointing down
        c, s = np.cos(angle), np.sin(angle)
        self.rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ self.rot
        narrow = 2 * self.half[1]  # the box's short side, when the fingers line up with it
        between = np.linalg.norm(self.pos[:2] - self.center[:2]) < 0.01 and \
            abs(self.pos[2] - self.center[2]) < self.half[2]
        floor = narrow if between or self.held is not None else 0.0
        opening = action[6] < 0
        self.width = min(0.08, self.width + 0.01) if opening else max(floor, self.width - 0.01)
        if action[6] > 0 and between and self.width == narrow and self.held is None:
            self.held = self.center - self.pos
        if self.held is not None and (action[6] < 0 or (self.drops and self.pos[2] > 0.12)):
            self.drops = max(0, self.drops - 1)
            self.held, self.center = None, np.r_[self.center[:2], self.half[2]]
        if self.held is not None:
            self.center = self.pos + self.held


@pytest.mark.parametrize("drops", [0, 1])
def test_controller_places_the_object_and_retries_a_drop(drops):
    scene = KinematicScene(drops)
    ctrl = PickPlaceController(scene)
    seen = set()
    for _ in range(400):
        seen.add(ctrl.phase)
        if ctrl.phase is Phase.DONE:
            break
        scene.step(ctrl.act())
    assert ctrl.phase is Phase.DONE, ctrl.phase
    assert np.linalg.norm(scene.center[:2] - scene.goal.center) < 0.011
    assert ctrl.attempts == drops
    assert {Phase.CLOSE, Phase.LIFT, Phase.CARRY, Phase.LOWER, Phase.RELEASE} <= seen


def test_grasps_cross_the_short_side_and_avoid_neighbours_and_failures():
    scene = KinematicScene()
    short_side = np.degrees(0.4 + np.pi / 2) % 180  # the box is turned by 0.4 rad
    assert abs(np.degrees(plan_grasp(scene).yaw) % 180 - short_side) < 3
    # A failed grasp is not tried again while another fits.
    first = plan_grasp(scene)
    assert not plan_grasp(scene, [first]).near(first)
    # A tall neighbour under a corner of the hand turns the grasp away from it.
    axis = np.array([np.cos(first.yaw), np.sin(first.yaw)])
    spot = scene.center[:2] + 0.09 * axis + 0.045 * np.array([-axis[1], axis[0]])
    scene.neighbour = np.array([[*spot - 0.015, 0.0], [*spot + 0.015, 0.12]])
    turned = plan_grasp(scene)
    assert not turned.near(first)
    assert abs(np.degrees(turned.yaw) % 180 - short_side) < 25  # still across the short side


def test_rim_grasps_take_the_side_with_room():
    bowl = GraspSpec(mode="rim")
    scene = KinematicScene(grasp=bowl)
    scene.half = np.array([0.05, 0.05, 0.025])  # wider than the open fingers
    scene.obj_yaw = 0.0
    free = plan_grasp(scene)
    assert free.side != 0
    out = free.side * np.array([np.cos(free.yaw), np.sin(free.yaw)])
    # A wall just beyond that side's rim: the outer finger has no room there any more.
    spot = scene.center[:2] + 0.08 * out
    scene.neighbour = np.array([[*spot - 0.01, 0.0], [*spot + 0.01, 0.1]])
    moved = plan_grasp(scene)
    new_out = moved.side * np.array([np.cos(moved.yaw), np.sin(moved.yaw)])
    assert new_out @ out < 0.8


# --- the real simulators -------------------------------------------------------------

def run_episodes(env, expert, init_ids, noise: float = 0.0) -> list[bool]:
    """One episode per id at once (env slot g starts from ``init_ids[g]``), with
    Gaussian noise of std ``noise`` on the arm dims; whether each succeeded."""
    rng = np.random.default_rng(0)
    for group, init_id in enumerate(init_ids):
        env.reset_group(group, init_id)
        expert.reset(group)
    success, active = [False] * len(init_ids), list(range(len(init_ids)))
    while active:
        ids = np.array(active)
        actions = expert.act(ids)
        assert actions.dtype == np.float32 and actions.shape == (len(ids), 7)
        actions[:, :6] += noise * rng.standard_normal((len(ids), 6))
        res = env.step(ids, actions)
        for row, e in enumerate(ids):
            if res.terminated[row] or res.truncated[row] or res.errors[row]:
                assert not res.errors[row]
                success[e] = bool(res.success[row])
                active.remove(e)
    return success


def expert_run(cfg, init_ids, noise: float = 0.0) -> list[bool]:
    from envs import make_env
    from experts import make_expert

    env = make_env(cfg, len(init_ids), 1, 7)
    try:
        return run_episodes(env, make_expert(cfg, env), init_ids, noise)
    finally:
        env.close()


def sim_cfg(kind: str, name: str, task_ids=()):
    """A small-image env config: robosuite task ``name``, or LIBERO suite ``name``."""
    from configs import EnvConfig, LiberoEnvConfig, RobosuiteEnvConfig

    family = {"robosuite": RobosuiteEnvConfig(name)} if kind == "robosuite" else \
        {"libero": LiberoEnvConfig(name, list(task_ids))}
    return EnvConfig(kind=kind, image_size=32, fast_render=True, wrist_camera=False, **family)


def test_make_expert_names_what_exists():
    from experts import make_expert

    with pytest.raises(ValueError, match="PickPlaceCan"):
        make_expert(sim_cfg("robosuite", "Door"), None)
    with pytest.raises(ValueError, match="libero_spatial"):
        make_expert(sim_cfg("libero", "libero_goal"), None)


def test_robosuite_lift_expert_also_with_noise():
    assert expert_run(sim_cfg("robosuite", "Lift"), [100, 101]) == [True, True]
    assert expert_run(sim_cfg("robosuite", "Lift"), [102], noise=0.2) == [True]


def test_robosuite_pick_place_can_expert():
    assert expert_run(sim_cfg("robosuite", "PickPlaceCan"), [100]) == [True]


@pytest.mark.parametrize("suite, tasks", [("libero_spatial", [0, 4]),
                                          ("libero_object", [0, 1])])
def test_libero_experts(suite, tasks):
    # Two tasks side by side in one vector env; the official initial state 1 of each.
    cfg = sim_cfg("libero", suite, tasks)
    assert expert_run(cfg, [t * 1000 + 1 for t in tasks]) == [True, True]


def test_an_episode_goes_on_success_hold_steps_past_its_first_success():
    """Lift with ``env.success_hold_steps=8``: the episode ends 8 steps after the first
    success, rewarded once; the expert holds the cube up, so those steps succeed too."""
    from dataclasses import replace

    from envs import make_env
    from experts import make_expert

    cfg = replace(sim_cfg("robosuite", "Lift"), success_hold_steps=8)
    env = make_env(cfg, 1, 1, 7)
    try:
        expert, ids = make_expert(cfg, env), np.array([0])
        env.reset_group(0, 100)
        expert.reset(0)
        steps = []
        while not steps or not (steps[-1].terminated[0] or steps[-1].truncated[0]):
            steps.append(env.step(ids, expert.act(ids)))
    finally:
        env.close()
    success = [bool(r.success[0]) for r in steps]
    first = success.index(True)
    assert len(steps) == first + 1 + 8 and steps[-1].terminated[0]
    assert [float(r.rewards[0]) for r in steps] == [0.0] * first + [1.0] + [0.0] * 8
    assert all(success[first:])
