"""Scripted experts for robosuite's own tasks: Lift and the single-object PickPlace tasks.

Each task becomes a :class:`~experts.scene.SimScene` read from the task's own
attributes: Lift's cube; PickPlace's object in use (``obj_to_use``), its bin placement
(``target_bin_placements``, what ``_check_success`` tests) and both bins as obstacles.
"""

from __future__ import annotations

import numpy as np

from experts.geometry import BodyShape, support_height
from experts.manipulation import PickPlaceExpert
from experts.scene import GraspSpec, SimScene, Target

LIFT_GRASP = GraspSpec(mode="center", depth=0.02, lift=0.06)
# PickPlace objects stand upright: take them a little below the top, as a hand would.
PICK_PLACE_GRASP = GraspSpec(mode="center", depth=0.03, max_depth_frac=0.4)
EXPERT_TASKS = ("Lift", "PickPlaceCan", "PickPlaceBread")


def lift_scene(sim_env) -> SimScene:
    """Lift: grasp the cube and raise it (success: 4 cm above the table)."""
    return SimScene(sim_env, sim_env.cube_body_id, (), lambda: None, LIFT_GRASP)


def pick_place_scene(sim_env) -> SimScene:
    """PickPlace with one object: carry it into the quarter of the goal bin that
    ``_check_success`` tests; its centre is the task's own ``target_bin_placements``."""
    if sim_env.single_object_mode != 2:
        raise ValueError("the PickPlace expert takes single-object tasks (PickPlaceCan...)")
    model, data = sim_env.sim.model, sim_env.sim.data._data
    name = sim_env.obj_to_use
    obj = BodyShape(model._model, data, sim_env.obj_body_id[name])
    bins = [model.body_name2id(b) for b in ("bin1", "bin2")]
    goal_bin = BodyShape(model._model, data, bins[1])
    # The quarter _check_success tests (bin_size / 4 each side of the placement), less
    # the object's own half width and a margin: the quarters are walled off.
    corners = obj.corners().reshape(-1, 3)
    radius = 0.5 * float((corners.max(0) - corners.min(0))[:2].max())
    half = np.asarray(sim_env.bin_size[:2], float) / 4 - radius - 0.03
    center = np.asarray(sim_env.target_bin_placements[sim_env.object_id][:2], float)

    def target() -> Target:
        boxes = goal_bin.boxes()
        return Target(center, half, support_height(boxes, center),
                      float(boxes[:, 1, 2].max()), tolerance=0.015)

    return SimScene(sim_env, sim_env.obj_body_id[name], bins, target, PICK_PLACE_GRASP)


def robosuite_expert(env, task: str) -> PickPlaceExpert:
    """The expert of robosuite task ``task`` over the slots of ``env``."""
    if task == "Lift":
        return PickPlaceExpert(env, lift_scene)
    if task in EXPERT_TASKS:
        return PickPlaceExpert(env, pick_place_scene)
    raise ValueError(f"no scripted expert for robosuite task {task!r}; experts exist for: "
                     f"{list(EXPERT_TASKS)}")
