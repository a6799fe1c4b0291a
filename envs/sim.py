"""The shared layer under LIBERO and robosuite: E MuJoCo envs behind :class:`VectorEnv`.

Each env slot holds a robosuite environment built without robosuite's own cameras:
stepping runs physics only, and images are drawn by :class:`envs.render.SimRenderer`
when :meth:`observe` asks for them -- once per action chunk, not once per action. A
slot's images are therefore always those of its current state.

Initial states are ids ``task_index * INIT_STRIDE + state_index``. After every reset the
env takes ``settle_steps`` no-op actions (arm still, gripper open) so that objects come
to rest, as LIBERO's standard evaluation does; they count neither as steps nor reward.

An episode ends at its first success (reward 1 there, 0 elsewhere), or
``success_hold_steps`` steps after it: a recording then shows the task held (or undone),
each step's ``success`` the benchmark's check at that step, frames a success model can
learn from beyond the one moment the task was first achieved.

A simulator failure (an exception, a non-finite state, or MuJoCo's own instability
warning) ends that env's episode with an error string; the other envs carry on.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
from typing_extensions import override

from envs.base import EnvObs, StepResult, VectorEnv
from envs.cameras import place_camera
from envs.render import ModelAssets, SharedGL, SimRenderer
from envs.robot_io import libero_state, orient, state_8_to_7, to_env_action

log = logging.getLogger(__name__)
_GLOBAL_RNG = threading.Lock()
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float64)


@contextlib.contextmanager
def numpy_seeded(seed: int):
    """NumPy's global generator seeded inside the block, restored after.

    robosuite and LIBERO draw object sizes (at build), placements and joint noise (at
    reset) from the global generator; seeding it makes those a function of ``seed``.
    """
    with _GLOBAL_RNG:  # actors as threads (--single-process) share the generator
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(saved)


def seeded_reset(sim_env, seed: int) -> dict:
    """``sim_env.reset()`` as a function of ``seed`` alone."""
    with numpy_seeded(seed):
        return sim_env.reset()


@dataclass(frozen=True)
class SimOptions:
    """What every MuJoCo vector env shares (see ``configs.EnvConfig`` for the docs)."""

    image_size: int = 224
    max_episode_steps: int = 220
    state_dim: int = 8
    wrist_camera: bool = True
    fast_render: bool = False
    orientation: str = "upright"
    gripper_convention: str = "env"
    settle_steps: int = 10
    success_hold_steps: int = 0
    main_camera: str = "agentview"
    wrist_camera_name: str = "robot0_eye_in_hand"
    record_cameras: tuple[str, ...] = ()  # envs/cameras.py's, rendered in record_extras


class Slot:
    """One env: its simulator, renderer, episode counters and last proprioception."""

    def __init__(self):
        self.key: Optional[tuple] = None
        self.sim_env = None
        self.renderer: Optional[SimRenderer] = None
        self.cameras: tuple[int, int] = (-1, -1)
        self.added: dict[str, int] = {}  # record_cameras' ids
        self.instruction = ""
        self.state = np.zeros(8, np.float32)
        self.steps = 0
        self.first_success = -1  # the step count at the first success; -1: none yet
        self.warnings_at_reset = 0


class MujocoVectorEnv(VectorEnv):
    """E robosuite-based envs stepped in this process; subclasses say how to build/reset."""

    def __init__(self, num_envs: int, group_size: int, opts: SimOptions):
        if num_envs % group_size:
            raise ValueError(f"num_envs {num_envs} is not a multiple of group_size "
                             f"{group_size}")
        if opts.state_dim not in (7, 8):
            raise ValueError(f"state_dim must be 8 (LIBERO) or 7, not {opts.state_dim}")
        import mujoco

        self._mj = mujoco
        self.num_envs, self.group_size, self.opts = num_envs, group_size, opts
        self.state_dim, self.action_dim = opts.state_dim, 7
        self.max_episode_steps = opts.max_episode_steps
        self.image_orientation = opts.orientation
        self.gl = SharedGL(opts.image_size)
        self.slots = [Slot() for _ in range(num_envs)]
        self.assets: dict[tuple, ModelAssets] = {}  # by build key: one GL upload per scene

    # --- what a simulator family provides ----------------------------------------------
    @abc.abstractmethod
    def _build(self, init_state_id: int):
        """A new robosuite environment for this id's task, and its instruction."""

    @abc.abstractmethod
    def _key(self, init_state_id: int) -> tuple:
        """Which built environment serves this id (ids of one key share a simulator)."""

    @abc.abstractmethod
    def _reset_sim(self, sim_env, init_state_id: int) -> dict:
        """Reset ``sim_env`` into this initial state; returns robosuite's observation."""

    @abc.abstractmethod
    def _success(self, sim_env) -> bool:
        """The benchmark's own success check."""

    def _release(self, slot: Slot) -> None:
        if slot.renderer is not None:
            slot.renderer.free()
            if slot.renderer.assets.users == 0:
                self.assets.pop(slot.key, None)
        if slot.sim_env is not None:
            slot.sim_env.close()
        slot.sim_env, slot.renderer, slot.key = None, None, None

    # --- VectorEnv ---------------------------------------------------------------------
    @override
    def reset_group(self, group: int, init_state_id: int) -> None:
        for e in range(group * self.group_size, (group + 1) * self.group_size):
            self._reset_slot(self.slots[e], init_state_id)

    def _reset_slot(self, slot: Slot, init_state_id: int) -> None:
        """Reset one env; a reset that fails (an exception, or a simulation that blows up
        while settling) gets a freshly built simulator and one more try."""
        problem = ""
        for _attempt in range(2):
            try:
                problem = self._try_reset(slot, init_state_id)
            except Exception as err:  # noqa: BLE001 -- any simulator failure
                problem = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            if not problem:
                return
            log.warning("reset to initial state %d failed (%s); rebuilding the simulator",
                        init_state_id, problem)
            self._release(slot)
        raise RuntimeError(f"cannot reset an env to initial state {init_state_id}: {problem}")

    def _try_reset(self, slot: Slot, init_state_id: int) -> str:
        key = self._key(init_state_id)
        if slot.key != key:
            self._release(slot)
            with numpy_seeded(0):  # every slot builds the same scene (e.g. Lift's cube size)
                slot.sim_env, slot.instruction = self._build(init_state_id)
            model, data = slot.sim_env.sim.model._model, slot.sim_env.sim.data._data
            if key not in self.assets:
                self.assets[key] = ModelAssets(self.gl, model, self.opts.image_size,
                                               self.opts.fast_render)
            slot.renderer = SimRenderer(self.assets[key], model, data, self.opts.image_size)
            slot.key = key
            slot.cameras = (slot.renderer.camera_id(self.opts.main_camera),
                            slot.renderer.camera_id(self.opts.wrist_camera_name))
            slot.added = {c: place_camera(model, slot.renderer, c)
                          for c in self.opts.record_cameras}
        obs = self._reset_sim(slot.sim_env, init_state_id)
        # Two things survive robosuite's soft reset and would make an env's next steps
        # depend on its past: the solver's warm start and the gripper's smoothed action
        # (a hard reset, as LIBERO's evaluation does, starts both from zero).
        slot.sim_env.sim.data._data.qacc_warmstart[:] = 0
        for robot in slot.sim_env.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        slot.steps, slot.first_success = 0, -1
        slot.warnings_at_reset = self._warnings(slot)
        for _ in range(self.opts.settle_steps):
            obs, _, _, _ = slot.sim_env.step(NOOP_ACTION)
        problem = self._check_sim(slot, obs)
        slot.state = self._state(obs)
        return problem

    @override
    def step(self, env_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        b = len(env_ids)
        rewards, success = np.zeros(b, np.float32), np.zeros(b, bool)
        terminated, truncated = np.zeros(b, bool), np.zeros(b, bool)
        errors = [""] * b
        for row, e in enumerate(env_ids):
            slot = self.slots[int(e)]
            try:
                obs, _, _, _ = slot.sim_env.step(
                    to_env_action(actions[row], self.opts.gripper_convention))
                errors[row] = self._check_sim(slot, obs)
                success[row] = not errors[row] and self._success(slot.sim_env)
            except Exception as err:  # noqa: BLE001 -- any simulator failure ends the episode
                errors[row] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            if not errors[row]:
                slot.state = self._state(obs)
            slot.steps += 1
            if success[row] and slot.first_success < 0:
                slot.first_success = slot.steps
                rewards[row] = 1.0
            # the episode ends success_hold_steps after its first success (0: at it)
            terminated[row] = (slot.first_success >= 0 and slot.steps - slot.first_success
                               >= self.opts.success_hold_steps)
            truncated[row] = not terminated[row] and slot.steps >= self.max_episode_steps
        return StepResult(rewards, terminated, truncated, success, errors)

    @override
    def observe(self, env_ids: np.ndarray) -> EnvObs:
        size, b = self.opts.image_size, len(env_ids)
        main = np.empty((b, size, size, 3), np.uint8)
        wrist = np.empty((b, size, size, 3), np.uint8) if self.opts.wrist_camera else None
        raw = np.empty((size, size, 3), np.uint8)
        for row, e in enumerate(env_ids):
            slot = self.slots[int(e)]
            main[row] = orient(slot.renderer.render(slot.cameras[0], raw),
                               self.opts.orientation)
            if wrist is not None:
                wrist[row] = orient(slot.renderer.render(slot.cameras[1], raw),
                                    self.opts.orientation)
        return EnvObs(main, self.proprioception(env_ids),
                      [self.slots[int(e)].instruction for e in env_ids], wrist)

    def proprioception(self, env_ids: np.ndarray) -> np.ndarray:
        """The policy's state of each env, float32 [B, state_dim] (no render)."""
        states = np.stack([self.slots[int(e)].state for e in env_ids])
        if self.state_dim == 7:
            states = state_8_to_7(states)
        return states.astype(np.float32, copy=False)

    def show(self, env_id: int, flat_state: np.ndarray) -> None:
        """Put env ``env_id`` (reset once, so built) into a MuJoCo state, flattened as
        :meth:`record_extras` stores it (time, qpos, qvel), without a physics step: every
        body's pose follows by forward kinematics, so :meth:`observe` then draws that state
        and reads its proprioception (a learned simulator's predicted state drawn by this
        one: :mod:`envs.sim_view`). The episode's counters are left alone."""
        slot = self.slots[env_id]
        sim = slot.sim_env.sim
        sim.set_state_from_flattened(np.asarray(flat_state, np.float64))
        sim.forward()
        slot.state = self._state(slot.sim_env._get_observations(force_update=True))

    def check_success(self, env_id: int) -> bool:
        """The benchmark's own success check in env ``env_id``'s current MuJoCo state (as
        :meth:`show` left it, or as a step did)."""
        return self._success(self.slots[env_id].sim_env)

    def mujoco_model(self, env_id: int):
        """Env ``env_id``'s ``mujoco.MjModel`` (reset once, so built)."""
        return self.slots[env_id].sim_env.sim.model._model

    def flat_state_size(self, env_id: int) -> int:
        """The length of env ``env_id``'s flattened MuJoCo state (1 + nq + nv)."""
        return int(self.slots[env_id].sim_env.sim.get_state().flatten().size)

    def record_extras(self, env_ids: np.ndarray) -> dict:
        """The simulator's state (MuJoCo's flattened time, qpos, qvel, as LIBERO's
        ``states``), the arm's joint positions, LIBERO's eef/gripper observations and, as
        ``view:<camera>``, the ``record_cameras``' views (oriented as the main camera's)."""
        rows = []
        for e in env_ids:
            slot = self.slots[int(e)]
            sim, robot = slot.sim_env.sim, slot.sim_env.robots[0]
            state = slot.state.astype(np.float64)
            rows.append({"states": np.asarray(sim.get_state().flatten(), np.float64),
                         "joint_states": np.array(sim.data.qpos[robot._ref_joint_pos_indexes],
                                                  np.float64),
                         "ee_states": state[:6], "gripper_states": state[6:8],
                         "ee_pos": state[:3], "ee_ori": state[3:6],
                         **{f"view:{c}": orient(slot.renderer.render(cid),
                                                self.opts.orientation)
                            for c, cid in slot.added.items()}})
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}

    def frame(self, env_id: int) -> np.ndarray:
        """The main camera of one env now, upright (for videos)."""
        slot = self.slots[env_id]
        return orient(slot.renderer.render(slot.cameras[0]), self.opts.orientation)

    @override
    def close(self) -> None:
        for slot in self.slots:
            self._release(slot)
        self.gl.free()

    # --- helpers ---------------------------------------------------------------------
    @staticmethod
    def _state(obs: dict) -> np.ndarray:
        return libero_state(obs["robot0_eef_pos"], obs["robot0_eef_quat"],
                            obs["robot0_gripper_qpos"])

    def _warnings(self, slot: Slot) -> int:
        # MuJoCo resets a simulation whose qpos/qvel/qacc blew up, and only counts it.
        data, w = slot.sim_env.sim.data._data, self._mj.mjtWarning
        return sum(int(data.warning[k].number)
                   for k in (w.mjWARN_BADQPOS, w.mjWARN_BADQVEL, w.mjWARN_BADQACC))

    def _check_sim(self, slot: Slot, obs: dict) -> str:
        data = slot.sim_env.sim.data._data
        if not (np.isfinite(data.qpos).all() and np.isfinite(data.qvel).all()):
            return f"non-finite simulator state at step {slot.steps + 1}"
        if self._warnings(slot) > slot.warnings_at_reset:
            return (f"MuJoCo instability (NaN/Inf or huge qpos, qvel or qacc; the simulator "
                    f"reset itself) at step {slot.steps + 1}")
        return ""
