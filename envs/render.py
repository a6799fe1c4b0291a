"""Offscreen MuJoCo rendering on the CPU: backend choice and a camera renderer.

MuJoCo and PyOpenGL fix their GL platform when first imported, so the backend is chosen
by :func:`select_gl_backend` *before* either is imported: each candidate is tried in a
short subprocess and the first that renders wins (``egl`` first, ``osmesa`` as fallback).

:class:`SimRenderer` draws any camera of one MuJoCo model. All renderers of a process
share one GL context (robosuite makes one per env and never makes it current before
drawing, which breaks with several envs in one process). ``fast=True`` turns off
multisampling, shadows and reflections: 2-3x faster on CPU, and the images differ.
:class:`ModelAssets` (meshes and textures in GL) is shared by the renderers of models
built from the same file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import numpy as np

BACKENDS = ("egl", "osmesa")

_PROBE = """
import mujoco, numpy as np
ctx = mujoco.GLContext(32, 32); ctx.make_current()
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="1"/></worldbody></mujoco>')
con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, con)
img = np.zeros((32, 32, 3), np.uint8)
mujoco.mjr_readPixels(img, None, mujoco.MjrRect(0, 0, 32, 32), con)
print(mujoco.__version__)
"""


class RenderError(RuntimeError):
    """No offscreen GL backend works on this machine."""


def _probe(backend: str) -> Optional[str]:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    if out.returncode == 0:
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {out.returncode}"


def select_gl_backend(preference: str = "auto") -> str:
    """Pick and export ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``); returns the backend.

    ``preference`` is ``auto`` (egl, then osmesa), ``egl`` or ``osmesa``. Must run before
    mujoco or robosuite is imported in this process; a choice already made (by the
    launcher, inherited through the environment) is kept without probing again.
    """
    chosen = os.environ.get("CHUNKRL_GL_BACKEND")
    if chosen and preference in ("auto", chosen):
        return chosen
    if "mujoco" in sys.modules:  # already imported: its GL platform is fixed
        current = os.environ.get("MUJOCO_GL", "")
        if current in BACKENDS and preference in ("auto", current):
            return current
        raise RenderError(
            f"mujoco was imported with MUJOCO_GL={current or '(unset)'} before the render "
            f"backend ({preference}) was chosen; build envs before importing mujoco, or "
            "set MUJOCO_GL=egl (or osmesa) in the environment")
    candidates = BACKENDS if preference == "auto" else (preference,)
    failures = []
    for backend in candidates:
        why = _probe(backend)
        if why is None:
            os.environ.update(MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend,
                              CHUNKRL_GL_BACKEND=backend)
            return backend
        failures.append(f"{backend}: {why}")
    raise RenderError(
        "no offscreen rendering backend works (" + "; ".join(failures) + "). Install "
        "Mesa's EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa "
        "(apt-get install libosmesa6) -- `make install` does -- or set env.render_backend")


class SharedGL:
    """One GL context for every renderer of this process, created on first use."""

    def __init__(self, max_size: int = 256):
        self.max_size = max_size
        self._ctx = None

    def make_current(self) -> None:
        """Make the context current on this thread, creating it on first use."""
        import mujoco

        if self._ctx is None:
            self._ctx = mujoco.GLContext(self.max_size, self.max_size)
        self._ctx.make_current()

    def free(self) -> None:
        """Free the context, if created (the next ``make_current`` creates a new one)."""
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None


class ModelAssets:
    """A model's meshes and textures uploaded to GL (an ``MjrContext``), with its
    offscreen framebuffer. Models built from the same file have the same assets, so one
    upload serves all of them: on llvmpipe an upload of a LIBERO scene costs ~450 MB.
    """

    def __init__(self, gl: SharedGL, model, size: int, fast: bool):
        import mujoco

        gl.make_current()
        # The offscreen buffer is sized once, to the image: no 640x480 buffer to clear.
        model.vis.global_.offwidth = max(size, 1)
        model.vis.global_.offheight = max(size, 1)
        if fast:
            model.vis.quality.offsamples = 0
        self.gl, self.fast = gl, fast
        self.con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
        self.users = 0

    def free(self) -> None:
        """Free the uploaded meshes and textures (the ``MjrContext``)."""
        self.gl.make_current()
        self.con.free()


class SimRenderer:
    """Renders cameras of one MuJoCo model/data pair into uint8 [H,W,3] (OpenGL rows).

    Rows come bottom-up, as OpenGL reads them; callers flip (see ``envs.robot_io.orient``).
    ``assets`` may be shared with the renderers of other models built from the same file.
    """

    def __init__(self, assets: ModelAssets, model, data, size: int):
        import mujoco

        self._mj, self.assets, self.model, self.data, self.size = mujoco, assets, model, data, size
        self.gl, self.con = assets.gl, assets.con
        assets.users += 1
        self.scene = mujoco.MjvScene(model, maxgeom=2000)
        if assets.fast:
            self.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.option = mujoco.MjvOption()
        self.option.geomgroup[0] = 0  # collision meshes hidden, as robosuite renders
        self.option.geomgroup[1] = 1
        self.perturb = mujoco.MjvPerturb()
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.viewport = mujoco.MjrRect(0, 0, size, size)

    def camera_id(self, name: str) -> int:
        """The id of the model's camera ``name``; ValueError when it has none."""
        cid = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_CAMERA, name)
        if cid < 0:
            raise ValueError(f"the model has no camera named {name!r}")
        return cid

    def render(self, camera_id: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The camera's image, bottom row first, into ``out`` when given."""
        mj = self._mj
        self.gl.make_current()
        # Renderers share the GL context: bind this one's framebuffer before drawing.
        mj.mjr_setBuffer(mj.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
        self.camera.fixedcamid = camera_id
        mj.mjv_updateScene(self.model, self.data, self.option, self.perturb, self.camera,
                           mj.mjtCatBit.mjCAT_ALL, self.scene)
        mj.mjr_render(self.viewport, self.scene, self.con)
        if out is None:
            out = np.empty((self.size, self.size, 3), np.uint8)
        mj.mjr_readPixels(out, None, self.viewport, self.con)
        return out

    def free(self) -> None:
        """Drop this renderer; the assets go when their last user does."""
        self.assets.users -= 1
        if self.assets.users == 0:
            self.assets.free()
