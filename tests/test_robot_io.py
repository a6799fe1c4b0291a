"""Pure robot conversions: states, gripper conventions, image orientation, GL selection."""

from __future__ import annotations

import numpy as np
import pytest

from envs import render
from envs.robot_io import orient, quat_to_axis_angle, state_8_to_7, to_env_action


def test_axis_angle_matches_robosuite():
    from robosuite.utils.transform_utils import quat2axisangle

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(50, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.concatenate([quats, [[0, 0, 0, 1.0]]])  # no rotation: the zero vector
    ours = quat_to_axis_angle(quats)
    for q, mine in zip(quats, ours):
        np.testing.assert_allclose(mine, quat2axisangle(q.copy()), atol=1e-9)
    # By hand: 90 degrees about z.
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]),
                               [0, 0, np.pi / 2], atol=1e-12)


def test_state_8_to_7_by_hand():
    s8 = np.array([[1, 2, 3, 4, 5, 6, 0.04, -0.02]], np.float32)
    np.testing.assert_allclose(state_8_to_7(s8), [[1, 2, 3, 4, 5, 6, 0.01]], rtol=1e-6)
    with pytest.raises(ValueError, match="8-D"):
        state_8_to_7(np.zeros((2, 7)))


@pytest.mark.parametrize("convention, g, want", [
    ("env", -1.0, -1.0), ("env", 0.4, 0.4), ("env", 3.0, 1.0),
    # OpenVLA: 1 = open -> robosuite -1; 0 = closed -> +1; 0.5 -> 0 (its own sign(0)).
    ("openvla", 1.0, -1.0), ("openvla", 0.8, -1.0), ("openvla", 0.1, 1.0),
    ("openvla", 0.5, 0.0),
    # StarVLA's LIBERO evaluation: > 0.5 open (-1), else close (+1).
    ("starvla", 0.9, -1.0), ("starvla", 0.5, -1.0), ("starvla", 0.49, 1.0), ("starvla", 0.0, 1.0),
])
def test_gripper_conventions(convention, g, want):
    action = np.array([0.5, -2.0, 0, 0, 0, 0.1, g], np.float32)
    out = to_env_action(action, convention)
    assert out[-1] == pytest.approx(want)
    np.testing.assert_allclose(out[:6], [0.5, -1.0, 0, 0, 0, 0.1], rtol=1e-6)  # clipped
    with pytest.raises(ValueError, match="gripper_convention"):
        to_env_action(action, "rt1")


def test_orientations():
    raw = np.arange(6).reshape(2, 3, 1).repeat(3, axis=2).astype(np.uint8)
    np.testing.assert_array_equal(orient(raw, "upright"), raw[::-1])
    np.testing.assert_array_equal(orient(raw, "libero"), raw[::-1, ::-1])
    assert orient(raw, "libero").flags.c_contiguous
    with pytest.raises(ValueError, match="upright"):
        orient(raw, "sideways")


def test_gl_backend_choice_and_clear_error(monkeypatch):
    monkeypatch.delenv("CHUNKRL_GL_BACKEND", raising=False)
    monkeypatch.setattr(render.sys, "modules", {})  # as if mujoco were not imported yet
    tried = []

    def probe(backend):
        tried.append(backend)
        return None if backend == "osmesa" else "eglInitialize failed"

    monkeypatch.setattr(render, "_probe", probe)
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    assert render.select_gl_backend("auto") == "osmesa" and tried == ["egl", "osmesa"]
    assert render.os.environ["MUJOCO_GL"] == "osmesa"
    monkeypatch.delenv("CHUNKRL_GL_BACKEND")
    monkeypatch.setattr(render, "_probe", lambda backend: "library not found")
    with pytest.raises(render.RenderError, match="egl: library not found; osmesa: .*apt-get"):
        render.select_gl_backend("auto")


def test_real_probe_of_this_machine():
    """At least one backend renders here (make install puts Mesa's EGL and OSMesa)."""
    results = {b: render._probe(b) for b in render.BACKENDS}
    assert None in results.values(), results
