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
the checkpoint, and evaluates it as ``mj_kinematics`` does. For body b with parent p,
rotation matrices R and positions x in the world frame::

    R_b = R_p R0_b,   x_b = x_p + R_p o_b                       (fixed offset)
    hinge j (axis u, anchor c, angle theta):  a = x_b + R_b c,
        R_b <- R_b rot(u, theta),   x_b <- a - R_b c
    slide j (axis u, distance d):     x_b <- x_b + R_b u d
    ball j (quaternion w):            as hinge with rot(u, theta) replaced by R(w/|w|)
    free j (position y, quaternion w): x_b <- y,  R_b <- R(w/|w|)

with R0_b = R(q0_b) the body's rotation in its parent, R(q) a unit quaternion's matrix and
rot(u, theta) = I + sin(theta) [u]x + (1 - cos(theta)) [u]x^2 (Rodrigues). Only the
physics (contacts, the controller, inertia) is left to learn; the kinematics are the
robot's and the objects' own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FREE, BALL, SLIDE, HINGE = 0, 1, 2, 3  # mjtJoint


def quat_matrix(q: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) quaternions [...,4], normalised here -> rotation matrices [...,3,3]."""
    w, x, y, z = nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                       -1).unflatten(-1, (3, 3))


def _cross_matrix(u: torch.Tensor) -> torch.Tensor:
    """[u]x of an axis [3]: [u]x v = u x v."""
    z = u.new_zeros(())
    return torch.stack([z, -u[2], u[1], u[2], z, -u[0], -u[1], u[0], z]).view(3, 3)


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
        flat = [j for js in self.joints for j in js]
        axes = torch.tensor([j[2] for j in flat] or np.zeros((0, 3)), dtype=torch.float64)
        self.register_buffer("axes", axes, persistent=False)
        self.register_buffer("anchors", torch.tensor(
            [j[3] for j in flat] or np.zeros((0, 3)), dtype=torch.float64), persistent=False)
        # Rodrigues' [u]x and [u]x^2 of each joint's axis
        cross = torch.stack([_cross_matrix(u) for u in axes]) if len(flat) else \
            torch.zeros(0, 3, 3, dtype=torch.float64)
        self.register_buffer("cross", cross, persistent=False)
        self.register_buffer("cross2", cross @ cross, persistent=False)
        self.register_buffer("frames", quat_matrix(self.rotations), persistent=False)
        self._first_joint = np.cumsum([0] + [len(js) for js in self.joints]).tolist()
        moving = [bool(js) for js in self.joints]
        for b, p in enumerate(self.parents):
            moving[b] = moving[b] or (b > 0 and moving[p])
        self.moving = [b for b, m in enumerate(moving) if m]
        self._moving_set = set(self.moving)
        # objects: bodies on a free joint, whose positions relative to the others are
        # the grasp's geometry
        self.objects = [b for b, js in enumerate(self.joints) if any(j[0] == FREE for j in js)]
        self._others = [[b for b in self.moving if b != o] for o in self.objects]
        # bodies no joint moves are where they are once and for all
        x, r = self._poses(None, [b for b in range(len(parents)) if not moving[b]])
        self.register_buffer("fixed_x", torch.stack(
            [x.get(b, torch.zeros(3, dtype=torch.float64)) for b in range(len(parents))]),
            persistent=False)
        self.register_buffer("fixed_r", torch.stack(
            [r.get(b, torch.eye(3, dtype=torch.float64)) for b in range(len(parents))]),
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
        # (a body a joint turns about its own origin keeps its position: no batch axes)
        return torch.stack([(x[b] if b in self._moving_set else fixed[b]).expand(*lead, 3)
                            for b in range(len(self.parents))], -2)

    def _poses(self, qpos: torch.Tensor | None, bodies: list[int]) -> tuple[dict, dict]:
        """World positions and rotation matrices of ``bodies`` (in the model's order:
        parents first), each body's parent among them or fixed; ``qpos`` [...,nq] (None:
        bodies no joint moves)."""
        dtype = torch.float64 if qpos is None else qpos.dtype
        x = {0: self.offsets.new_zeros(3, dtype=dtype)}
        r = {0: torch.eye(3, dtype=dtype, device=self.offsets.device)}
        for b in bodies:
            if b == 0:
                continue
            p = self.parents[b]
            xp = x[p] if p in x else self.fixed_x[p].to(dtype)
            rp = r[p] if p in r else self.fixed_r[p].to(dtype)
            xb = xp + rp @ self.offsets[b].to(dtype)
            rb = rp @ self.frames[b].to(dtype)
            for k, (kind, adr, _, anchor) in enumerate(self.joints[b]):
                j = self._first_joint[b] + k
                if kind == FREE:
                    xb, rb = qpos[..., adr:adr + 3], quat_matrix(qpos[..., adr + 3:adr + 7])
                    continue
                if kind == SLIDE:
                    xb = xb + (rb @ self.axes[j].to(dtype)) * qpos[..., adr:adr + 1]
                    continue
                c = self.anchors[j].to(dtype) if any(anchor) else None
                pivot = xb + rb @ c if c is not None else xb
                if kind == HINGE:
                    theta = qpos[..., adr, None, None]
                    turn = torch.eye(3, dtype=dtype, device=qpos.device) + \
                        torch.sin(theta) * self.cross[j].to(dtype) + \
                        (1 - torch.cos(theta)) * self.cross2[j].to(dtype)
                else:  # BALL
                    turn = quat_matrix(qpos[..., adr:adr + 4])
                rb = rb @ turn
                xb = pivot - rb @ c if c is not None else pivot
            x[b], r[b] = xb, rb
        return x, r

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
        for o, others in zip(self.objects, self._others):
            parts.append((x[..., [o], :] - x[..., others, :]).flatten(-2))
        return torch.cat(parts, -1)


def body_positions(model, states: np.ndarray, qpos_start: int = 1) -> np.ndarray:
    """MuJoCo's own body positions (``mj_kinematics``) of flattened states [B,S]: the
    reference the torch tree is tested against."""
    import mujoco

    data = mujoco.MjData(model)
    out = []
    for s in states:
        data.qpos[:] = s[qpos_start:qpos_start + model.nq]
        mujoco.mj_kinematics(model, data)
        out.append(data.xpos.copy())
    return np.stack(out)
