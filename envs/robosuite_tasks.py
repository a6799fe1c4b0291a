"""robosuite's own single-arm tasks behind :class:`VectorEnv`: Panda arm, OSC_POSE.

Initial-state ids are seeds (0..999) of robosuite's own randomised reset (object
placement, joint noise), so the G envs of a group start identically; evaluation trial k
is seed k, and with ``held_out`` training draws seeds >= 100 only. Success is the task's own
``_check_success``; rewards are sparse (1 on success).
"""

from __future__ import annotations

from typing_extensions import override

from envs.base import split_init_state
from envs.sim import MujocoVectorEnv, SimOptions, seeded_reset

INSTRUCTIONS = {
    "Lift": "lift the red cube",
    "Stack": "stack the red cube on top of the green cube",
    "PickPlaceCan": "pick up the can and place it in its bin",
    "PickPlaceBread": "pick up the bread and place it in its bin",
    "Door": "open the door",
    "NutAssemblySquare": "fit the square nut onto the square peg",
    "NutAssemblyRound": "fit the round nut onto the round peg",
}


def check_task(task: str) -> None:
    """Raise ValueError naming the valid tasks when ``task`` is not one."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown robosuite task {task!r}; valid: {sorted(INSTRUCTIONS)}")


class RobosuiteVectorEnv(MujocoVectorEnv):
    """E envs of one robosuite task."""

    def __init__(self, num_envs: int, group_size: int, opts: SimOptions, task: str,
                 held_out: bool = False):
        check_task(task)
        self.task, self.held_out = task, held_out
        super().__init__(num_envs, group_size, opts)

    def _key(self, init_state_id: int) -> tuple:
        return ("robosuite", self.task)

    def _build(self, init_state_id: int):
        import robosuite
        from robosuite.controllers import load_controller_config

        env = robosuite.make(
            self.task, robots="Panda",
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
            reward_shaping=False, ignore_done=True, hard_reset=False, horizon=10**6,
            control_freq=20)
        return env, INSTRUCTIONS[self.task]

    def _reset_sim(self, sim_env, init_state_id: int) -> dict:
        return seeded_reset(sim_env, split_init_state(init_state_id)[1])

    @override
    def task_info(self, init_state_id: int) -> dict:
        return {"env_name": self.task, "problem_name": self.task, "bddl_file_name": ""}

    def _success(self, sim_env) -> bool:
        return bool(sim_env._check_success())
