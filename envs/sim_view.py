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

    def close(self) -> None:
        """Release the scene's simulator and renderer."""
        self.env.close()
