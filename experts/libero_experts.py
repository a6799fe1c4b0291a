"""Scripted experts for LIBERO's pick-and-place tasks (libero_spatial, libero_object).

The task comes from its own BDDL goal (``parsed_problem["goal_state"]``), one predicate:

* ``(on A B)``: B is an object; LIBERO's check wants A's body within 3 cm (xy) of B's,
  not below it, and touching it. The aim is B's body position.
* ``(in A R)``: R is a region site of an object (``basket_1_contain_region``); the check
  wants A's body inside the region's box. The aim is the region's centre, and A rests on
  the parent's floor.

Every object of the scene other than A is an obstacle. How to take A depends only on
what A is (:data:`GRASPS`, by BDDL category): LIBERO's black bowl is wider than the
gripper's opening and is taken by its rim; everything else across its narrowest width.
"""

from __future__ import annotations

import re

import numpy as np

from experts.geometry import BodyShape, support_height
from experts.manipulation import PickPlaceExpert
from experts.scene import GraspSpec, SimScene, Target

SUITES = ("libero_spatial", "libero_object")
GRASPS = {"akita_black_bowl": GraspSpec(mode="rim", depth=0.02)}
DEFAULT_GRASP = GraspSpec(mode="center", depth=0.03, max_depth_frac=0.5)
ON_TOLERANCE = 0.01  # per axis: LIBERO's "on" allows 3 cm from the centre
IN_TOLERANCE = 0.02  # per axis, around the region's centre


def category(name: str) -> str:
    """A BDDL object's category: its name without the instance number."""
    return re.sub(r"_\d+$", "", name)


def goal_of(env) -> tuple[str, str, str]:
    """The one (predicate, object, target) of a pick-and-place task's BDDL goal."""
    goal = env.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        raise ValueError(f"the LIBERO expert takes one (on A B) or (in A region) goal, "
                         f"not {goal}")
    predicate, obj, target = goal[0]
    return predicate.lower(), obj, target


def _target(env, predicate: str, target: str):
    """The function giving the target now."""
    model, data = env.sim.model._model, env.sim.data._data
    if predicate == "on":
        body = env.obj_body_id[target]
        shape = BodyShape(model, data, body)

        def on_target() -> Target:
            boxes, center = shape.boxes(), data.xpos[body][:2].copy()
            return Target(center, np.zeros(2), support_height(boxes, center),
                          float(boxes[:, 1, 2].max()), ON_TOLERANCE)

        return on_target
    site = env.object_sites_dict.get(target)
    if site is None or site.parent_name not in env.obj_body_id:
        raise ValueError(f"(in A {target}): {target} is not a region of an object")
    body, site_id = env.obj_body_id[site.parent_name], env.sim.model.site_name2id(target)
    shape = BodyShape(model, data, body)

    def in_target() -> Target:
        boxes, center = shape.boxes(), data.site_xpos[site_id][:2].copy()
        return Target(center, np.zeros(2), support_height(boxes, center),
                      float(boxes[:, 1, 2].max()), IN_TOLERANCE)

    return in_target


def libero_scene(control_env) -> SimScene:
    """The :class:`SimScene` of a LIBERO ``ControlEnv``'s current task."""
    env = control_env.env
    predicate, obj, target_name = goal_of(env)
    target = _target(env, predicate, target_name)
    obstacles = [b for name, b in env.obj_body_id.items() if name != obj]
    grasp = GRASPS.get(category(obj), DEFAULT_GRASP)
    return SimScene(env, env.obj_body_id[obj], obstacles, target, grasp)


def libero_expert(env, suite: str) -> PickPlaceExpert:
    """The expert of a LIBERO suite's tasks over the slots of ``env``."""
    if suite not in SUITES:
        raise ValueError(f"no scripted expert for LIBERO suite {suite!r}; experts exist "
                         f"for: {list(SUITES)}")
    return PickPlaceExpert(env, libero_scene)
