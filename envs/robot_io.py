"""Pure conversions between robot simulators and policies: states, actions, images.

State (LIBERO's 8-D): end-effector position (3), end-effector orientation as an
axis-angle vector (3), the two gripper finger positions (2). A policy that expects 7-D
gets ``[x, y, z, rx, ry, rz, (g0 + g1) / 2]``.

Actions are 7-D: a 6-D end-effector delta for robosuite's OSC_POSE controller, each in
[-1, 1], and the gripper. The simulator's gripper convention is robosuite's: -1 opens,
+1 closes. Policies trained on other conventions are mapped by ``gripper_convention``:

* ``env``: the policy already speaks robosuite's convention; the value is clipped.
* ``openvla``: OpenVLA and OpenVLA-OFT on LIBERO emit the gripper in [0, 1] with
  1 = open. As their evaluation does: rescale to [-1, 1] (``2g - 1``), binarise by sign,
  then invert, so 1 (open) -> -1 and 0 (closed) -> +1 (and exactly 0.5 -> 0).
* ``starvla``: StarVLA's QwenOFT emits the gripper in [0, 1] with 1 = open; its LIBERO
  evaluation (RLinf's) binarises it: ``g >= 0.5`` -> -1 (open), else +1 (close).

Images come out of OpenGL bottom row first. ``upright`` flips them vertically (the
camera's true view); ``libero`` also mirrors them left-right, i.e. rotates the raw
buffer by 180 degrees -- what LIBERO's datasets and every published LIBERO checkpoint
(OpenVLA, OpenVLA-OFT, StarVLA, RLinf) were trained on. Both have the world's up at the
top of the image.
"""

from __future__ import annotations

import numpy as np

GRIPPER_CONVENTIONS = ("env", "openvla", "starvla")
ORIENTATIONS = ("upright", "libero")


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle [...,3] of unit quaternions [...,4] in (x, y, z, w) order, as robosuite."""
    q = np.asarray(quat_xyzw, np.float64)
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    angle = 2.0 * np.arccos(w)
    # No rotation (den ~ 0) has no axis: the axis-angle vector is zero.
    scale = np.where(den > 1e-10, angle / np.maximum(den, 1e-10), 0.0)
    return q[..., :3] * scale[..., None]


def libero_state(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray,
                 gripper_qpos: np.ndarray) -> np.ndarray:
    """The 8-D LIBERO state, float32."""
    return np.concatenate([eef_pos, quat_to_axis_angle(eef_quat_xyzw),
                           gripper_qpos]).astype(np.float32)


def state_8_to_7(states: np.ndarray) -> np.ndarray:
    """[..., 8] LIBERO states -> [..., 7] with the two finger positions averaged."""
    states = np.asarray(states, np.float32)
    if states.shape[-1] != 8:
        raise ValueError(f"expected 8-D LIBERO states, got {states.shape[-1]}-D")
    return np.concatenate([states[..., :6], 0.5 * (states[..., 6:7] + states[..., 7:8])],
                          axis=-1)


def to_env_action(action: np.ndarray, convention: str) -> np.ndarray:
    """One policy action [7] -> the simulator's action [7] (float64, within [-1, 1])."""
    out = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    g = float(action[-1])
    if convention == "openvla":
        out[-1] = -np.sign(2.0 * g - 1.0)  # exactly 0.5 gives 0, as OpenVLA's own
    elif convention == "starvla":
        out[-1] = -1.0 if g >= 0.5 else 1.0
    elif convention != "env":
        raise ValueError(f"unknown gripper_convention {convention!r}; valid: "
                         f"{list(GRIPPER_CONVENTIONS)}")
    return out


def orient(raw: np.ndarray, orientation: str) -> np.ndarray:
    """An OpenGL image [H,W,3] (bottom row first) in the requested orientation, copied."""
    return orient_batch(raw, orientation)


def orient_batch(raw: np.ndarray, orientation: str) -> np.ndarray:
    """OpenGL images [...,H,W,3] in the requested orientation, copied (an involution:
    applied to oriented images it gives the OpenGL rows back)."""
    if orientation == "upright":
        return np.ascontiguousarray(raw[..., ::-1, :, :])
    if orientation == "libero":
        return np.ascontiguousarray(raw[..., ::-1, ::-1, :])
    raise ValueError(f"unknown image orientation {orientation!r}; valid: {list(ORIENTATIONS)}")


def policy_gripper(actions: np.ndarray, convention: str) -> np.ndarray:
    """Env-convention actions [...,7] (gripper -1 open, +1 close) -> the policy's
    convention (the target of behaviour cloning): ``env`` unchanged; ``openvla`` and
    ``starvla`` have the gripper in [0, 1] with 1 = open, so -1 -> 1 and +1 -> 0."""
    out = np.array(actions, np.float32, copy=True)
    if convention in ("openvla", "starvla"):
        out[..., -1] = 0.5 * (1.0 - np.clip(out[..., -1], -1.0, 1.0))
    elif convention != "env":
        raise ValueError(f"unknown gripper_convention {convention!r}; valid: "
                         f"{list(GRIPPER_CONVENTIONS)}")
    return out
