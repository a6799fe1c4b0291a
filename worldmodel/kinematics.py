"""MuJoCo's forward kinematics in torch: where every moving body is in a simulator state,
differentiably, as features for the learned dynamics.

On Lift the state model called a grasp wherever the fingers closed within ~4 cm of the
cube: in the RL policy's false successes its predicted fingers stopped at the cube's
width with the hand 3.3 cm from the cube's centre, where the real fingers closed on
nothing (benchmarks/RESULTS.md, issue 17, twenty-second session). Whether a grasp holds
is a matter of where the fingers are relative to the object, which an MLP on joint
angles must work out through the arm's kinematics. A :class:`KinematicTree` hands it
those positions: it is the model's kinematic tree (each body's offset from its parent,
its joints' axes and anchors), read once from the recordings' MuJoCo model and kept in
the checkpoint, and evaluates it as ``mj_kinematics`` does. For body b with parent p::

    q_b = q_p * q0_b,   x_b = x_p + R(q_p) o0_b                 (fixed offset)
    hinge j (axis u, anchor c, angle theta):  a = x_b + R(q_b) c,
        q_b <- q_b * quat(u, theta),   x_b <- a - R(q_b) c
    slide j (axis u, distance d):     x_b <- x_b + R(q_b) u d
    ball j (quaternion w):            as hinge with quat(u, theta) replaced by w/|w|
    free j (position y, quaternion w): x_b <- y,  q_b <- w/|w|

with R(q) the rotation of unit quaternion q. Only the physics (contacts, the controller,
inertia) is left to learn; the kinematics are the robot's and the objects' own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FREE, BALL, SLIDE, HINGE = 0, 1, 2, 3  # mjtJoint


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (w, x, y, z) quaternions [...,4]."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v [...,3] rotated by unit quaternion q [...,4]: v + 2w (u x v) + 2 u x (u x v)."""
    w, u = q[..., :1], q[..., 1:]
    t = 2 * torch.cross(u, v.expand_as(u), dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


class KinematicTree(nn.Module):
    """The positions of a MuJoCo model's moving bodies in flattened states; see the
    module docstring. Built by :meth:`from_mujoco`; :meth:`spec` rebuilds it."""

    def __init__(self, names: list[str], parents: list[int], offsets: list, rotations: list,
                 joints: list[list], qpos_start: int):
        super().__init__()
        self.names, self.parents, self.qpos_start = list(names), list(parents), qpos_start
        # per body: [(type, qpos address, axis, anchor)], in the model's order
        self.joints = [[(int(t), int(a), list(map(float, u)), list(map(float, c)))
                        for t, a, u, c in js] for js in joints]
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float64))
        self.register_buffer("rotations", torch.tensor(rotations, dtype=torch.float64))
        # the rest follows from the spec: not kept in a checkpoint's weights
        self.register_buffer("axes", torch.tensor(
            [j[2] for js in self.joints for j in js] or np.zeros((0, 3)), dtype=torch.float64),
            persistent=False)
        self.register_buffer("anchors", torch.tensor(
            [j[3] for js in self.joints for j in js] or np.zeros((0, 3)), dtype=torch.float64),
            persistent=False)
        moving = [bool(js) for js in self.joints]
        for b, p in enumerate(self.parents):
            moving[b] = moving[b] or (b > 0 and moving[p])
        self.moving = [b for b, m in enumerate(moving) if m]
        self._moving_set = set(self.moving)
        # objects: bodies on a free joint, whose positions relative to the others are
        # the grasp's geometry
        self.objects = [b for b, js in enumerate(self.joints) if any(j[0] == FREE for j in js)]
        # bodies no joint moves are where they are once and for all
        x, q = self._poses(None, [b for b in range(len(parents)) if not moving[b]])
        self.register_buffer("fixed_x", torch.stack(
            [x.get(b, torch.zeros(3, dtype=torch.float64)) for b in range(len(parents))]),
            persistent=False)
        self.register_buffer("fixed_q", torch.stack(
            [q.get(b, torch.zeros(4, dtype=torch.float64)) for b in range(len(parents))]),
            persistent=False)

    @classmethod
    def from_mujoco(cls, model, qpos_start: int = 1) -> "KinematicTree":
        """The tree of a ``mujoco.MjModel``; flattened states hold qpos from
        ``qpos_start`` on (1: robosuite's and LIBERO's time, qpos, qvel)."""
        import mujoco

        names, joints = [], []
        for b in range(model.nbody):
            names.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or f"body{b}")
            first = model.body_jntadr[b]
            joints.append([(model.jnt_type[j], model.jnt_qposadr[j], model.jnt_axis[j],
                            model.jnt_pos[j])
                           for j in range(first, first + model.body_jntnum[b])])
        if model.nmocap:
            raise ValueError("the kinematic tree takes models without mocap bodies")
        return cls(names, model.body_parentid.tolist(), model.body_pos.tolist(),
                   model.body_quat.tolist(), joints, qpos_start)

    def spec(self) -> dict:
        """What rebuilds this tree (plain lists: it goes into a checkpoint's spec)."""
        return {"names": self.names, "parents": self.parents,
                "offsets": self.offsets.tolist(), "rotations": self.rotations.tolist(),
                "joints": [[list(j) for j in js] for js in self.joints],
                "qpos_start": self.qpos_start}

    def positions(self, states: torch.Tensor) -> torch.Tensor:
        """Flattened states [...,S] -> every body's world position [...,nbody,3]."""
        x, _ = self._poses(states[..., self.qpos_start:], self.moving)
        lead = states.shape[:-1]
        fixed = self.fixed_x.to(states.dtype)
        return torch.stack([x[b] if b in self._moving_set else fixed[b].expand(*lead, 3)
                            for b in range(len(self.parents))], -2)

    def _poses(self, qpos: torch.Tensor | None, bodies: list[int]) -> tuple[dict, dict]:
        """World positions and orientations of ``bodies`` (in the model's order: parents
        first), each body's parent among them or fixed; ``qpos`` [...,nq] (None: bodies
        no joint moves)."""
        dtype = torch.float64 if qpos is None else qpos.dtype
        x = {0: self.offsets.new_zeros(3).to(dtype)}
        q = {0: self.offsets.new_tensor([1.0, 0.0, 0.0, 0.0]).to(dtype)}
        first_joint = np.cumsum([0] + [len(js) for js in self.joints])
        for b in bodies:
            if b == 0:
                continue
            p = self.parents[b]
            xp = x[p] if p in x else self.fixed_x[p].to(dtype)
            qp = q[p] if p in q else self.fixed_q[p].to(dtype)
            xb = xp + quat_rotate(qp, self.offsets[b].to(dtype))
            qb = quat_mul(qp, self.rotations[b].to(dtype))
            for k, (kind, adr, _, _) in enumerate(self.joints[b]):
                j = int(first_joint[b]) + k
                if kind == FREE:
                    xb = qpos[..., adr:adr + 3]
                    qb = nn.functional.normalize(qpos[..., adr + 3:adr + 7], dim=-1)
                    continue
                if kind == SLIDE:
                    xb = xb + quat_rotate(qb, self.axes[j].to(dtype)) * qpos[..., adr:adr + 1]
                    continue
                c = self.anchors[j].to(dtype)
                pivot = xb + quat_rotate(qb, c)
                if kind == HINGE:
                    half = 0.5 * qpos[..., adr:adr + 1]
                    turn = torch.cat([torch.cos(half), torch.sin(half) * self.axes[j].to(dtype)],
                                     -1)
                else:  # BALL
                    turn = nn.functional.normalize(qpos[..., adr:adr + 4], dim=-1)
                qb = quat_mul(qb, turn)
                xb = pivot - quat_rotate(qb, c)
            x[b], q[b] = xb, qb
        return x, q

    @property
    def feature_dim(self) -> int:
        """Entries of :meth:`features`."""
        m = len(self.moving)
        return 3 * m + 3 * len(self.objects) * (m - 1)

    def features(self, states: torch.Tensor) -> torch.Tensor:
        """[...,S] -> [...,F]: the moving bodies' world positions, then each object's
        position relative to every other moving body (the fingers' offsets from the cube)."""
        x = self.positions(states)
        parts = [x[..., self.moving, :].flatten(-2)]
        for o in self.objects:
            others = [b for b in self.moving if b != o]
            parts.append((x[..., [o], :] - x[..., others, :]).flatten(-2))
        return torch.cat(parts, -1)


def body_positions(model, data_states: np.ndarray, qpos_start: int = 1) -> np.ndarray:
    """MuJoCo's own body positions (``mj_kinematics``) of flattened states [B,S]: the
    reference the torch tree is tested against."""
    import mujoco

    data = mujoco.MjData(model)
    out = []
    for s in data_states:
        data.qpos[:] = s[qpos_start:qpos_start + model.nq]
        mujoco.mj_kinematics(model, data)
        out.append(data.xpos.copy())
    return np.stack(out)
