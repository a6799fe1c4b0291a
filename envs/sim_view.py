"""A learned simulator's predicted states drawn and read by the real one, without physics.

The world-model env with ``frames: simulator`` or ``proprio: simulator``
(:mod:`envs.world_model`) moves the simulator state on by its learned state model alone;
a :class:`SimulatorView` puts each predicted state into one robosuite scene (MuJoCo's
``set_state`` and forward kinematics: never a physics step) and reads back what the real
env would hand the policy in that state: the main (and wrist) camera's frame and the
proprioception (end-effector pose by forward kinematics, finger positions). The dynamics
and the success judge stay learned; only the drawing and the kinematics are exact, so a
world model seen this way can be wrong in what it predicts, never in how it shows it.

This is how the Lift experiments separate the two (benchmarks/RESULTS.md, issue 17): a
policy acting on the learned decoder's frames does something else than on real ones.
It needs the simulator's assets at run time (robosuite's, a PyPI package), which a pure
video world model does not. A render costs ~20 ms on this CPU (llvmpipe, any size), so
the env draws each action chunk's last state only: the one the policy acts on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.sim import MujocoVectorEnv

_SLOT = np.array([0])


@dataclass(frozen=True)
class View:
    """What the policy would be handed in B states: main uint8 [B,H,W,3], wrist uint8
    [B,H,W,3] or None, states float32 [B,P] (its proprioception)."""

    main: np.ndarray | None
    wrist: np.ndarray | None
    states: np.ndarray


class SimulatorView:
    """Draws flattened MuJoCo states of ``env``'s scene (one slot, reset once here)."""

    def __init__(self, env: MujocoVectorEnv, state_size: int):
        env.reset_group(0, 0)  # builds the scene, as every slot of a real env builds it
        have = env.flat_state_size(0)
        if have != state_size:
            raise ValueError(f"the world model's state model predicts {state_size}-D "
                             f"simulator states but this scene's are {have}-D: draw with "
                             "the simulator the recordings came from (env.robosuite.task)")
        self.env = env
        self.image_size = env.opts.image_size
        self.wrist = env.opts.wrist_camera

    def look(self, states: np.ndarray, draw: bool = True) -> View:
        """The view of each flattened state (float [B,S]); without ``draw`` its
        proprioception alone (``main`` and ``wrist`` None: no render)."""
        seen = []
        for state in states:
            self.env.show(0, state)
            seen.append(self.env.observe(_SLOT) if draw else self.env.proprioception(_SLOT))
        if not draw:
            return View(None, None, np.concatenate(seen))
        return View(np.concatenate([o.main_images for o in seen]),
                    np.concatenate([o.wrist_images for o in seen]) if self.wrist else None,
                    np.concatenate([o.states for o in seen]))

    def succeeded(self, states: np.ndarray) -> np.ndarray:
        """The simulator's own success check in each flattened state (float [B,S]; bool
        [B]): the benchmark's rule read off a state, with no learned judge."""
        won = []
        for state in states:
            self.env.show(0, state)
            won.append(self.env.check_success(0))
        return np.array(won, bool)

    def close(self) -> None:
        """Release the scene's simulator and renderer."""
        self.env.close()


def chunk_position_errors(view: SimulatorView, model, episodes, n: int, dims: int
                          ) -> dict[str, np.ndarray]:
    """How far the end effector the view reads in ``model``'s predicted states is from
    the recorded one, one chunk ahead. For every step t of each episode (a
    :class:`worldmodel.state_model.StateEpisode` with proprioception) with ``n`` recorded
    actions after it, the state model (or ensemble: its members' mean) predicts the
    states s^_{t+1..t+n} from the recorded s_t; with p the first ``dims`` entries of the
    policy's state (robosuite's end-effector position) and k = 1..n, Euclidean errors::

        predicted  |p(s^_{t+k}) - p_{t+k}|      copy_last  |p_t - p_{t+k}|
        reading    |p(s_t) - p_t|   (every recorded state: the view's own error; robosuite
                                     observes after a physics substep)

    with p(s) the view's reading of state s (forward kinematics) and p_t the recording's.
    Flat float arrays, one entry per (t, k) (per t for ``reading``)."""
    import torch

    from worldmodel.ensemble import shown_rollout

    out: dict[str, list] = {"predicted": [], "copy_last": [], "reading": []}
    for ep in episodes:
        starts = np.arange(len(ep) - n)  # s_t, then n actions whose states were recorded
        if len(starts):
            acts = np.stack([ep.actions[t:t + n] for t in starts])
            with torch.no_grad():
                pred = shown_rollout(model, torch.from_numpy(ep.states[starts]),
                                     torch.from_numpy(acts)).numpy()  # [W,n,S]
            seen = view.look(pred.reshape(-1, pred.shape[-1]), draw=False).states
            truth = np.stack([ep.proprio[t + 1:t + 1 + n, :dims] for t in starts])
            out["predicted"].append(np.linalg.norm(
                seen[:, :dims].reshape(truth.shape) - truth, axis=-1).ravel())
            out["copy_last"].append(np.linalg.norm(
                ep.proprio[starts, None, :dims] - truth, axis=-1).ravel())
        read = view.look(ep.states, draw=False).states[:, :dims]
        out["reading"].append(np.linalg.norm(read - ep.proprio[:, :dims], axis=-1))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def scene_view(cfg, action_dim: int, state_dim: int) -> SimulatorView:
    """The simulator's view (one env) of env config ``cfg``'s robosuite scene, whatever
    ``cfg.kind`` (a world-model env's config names the task its recordings came from):
    where the world-model env and the benchmarks draw and read predicted states."""
    import dataclasses

    from envs import make_env, prepare_rendering

    real = dataclasses.replace(cfg, kind="robosuite")
    prepare_rendering(real)  # a backend already chosen (by the launcher) is kept
    return SimulatorView(make_env(real, 1, 1, action_dim), state_dim)


def open_loop_verdicts(view: SimulatorView, model, episodes, threshold: float
                       ) -> dict[str, np.ndarray]:
    """Who calls each episode a success, open loop: ``model`` (a state model or ensemble)
    predicts every state from the recorded first one and the recorded actions, as the
    world-model env does from a reset. Per episode (bool [E] each):

        learned    the model's own judge: its success probability reaches ``threshold``
                   at some predicted state (the lowest member's, each on its own states)
        simulator  the simulator's check (:meth:`SimulatorView.succeeded`) holds at some
                   predicted state (the members' mean state, the one the env draws)
        recorded   the simulator's check at some recorded state (the view's own reading;
                   recordings keep the states before each action, not the last one's)
        real       the recording's outcome (a success after any action, the last too)

    A learned judge's false success that the simulator's check on the same predicted
    states does not make is the judge's error; one both make is the dynamics'."""
    from worldmodel.ensemble import as_ensemble, open_loop

    ens = as_ensemble(model)
    out: dict[str, list] = {"learned": [], "simulator": [], "recorded": [], "real": []}
    for ep in episodes:
        states, best = open_loop(ens, ep)
        out["learned"].append(best >= threshold)
        shown = ens.mean(states).numpy()
        out["simulator"].append(bool(view.succeeded(shown).any()))
        out["recorded"].append(bool(view.succeeded(ep.states).any()))
        out["real"].append(bool(ep.success.any()))  # the last action's too
    return {k: np.array(v, bool) for k, v in out.items()}


def scene_kinematics(cfg, action_dim: int, state_size: int) -> dict:
    """The kinematic tree (:class:`worldmodel.kinematics.KinematicTree`'s spec) of the
    robosuite scene of env config ``cfg`` (built as the world-model env builds its view),
    whose flattened states must be ``state_size`` long: what a state model with
    ``world_model.state.kinematics`` reads its states with."""
    import dataclasses

    from envs import make_env, prepare_rendering
    from worldmodel.kinematics import KinematicTree

    real = dataclasses.replace(cfg, kind="robosuite")
    prepare_rendering(real)
    env = make_env(real, 1, 1, action_dim)
    try:
        env.reset_group(0, 0)
        if env.flat_state_size(0) != state_size:
            raise ValueError(f"world_model.state.kinematics: the recordings' states are "
                             f"{state_size}-D but env.robosuite.task's scene's are "
                             f"{env.flat_state_size(0)}-D: name the task they were "
                             "recorded in")
        return KinematicTree.from_mujoco(env.mujoco_model(0)).spec()
    finally:
        env.close()
