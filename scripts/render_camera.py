"""Add a camera's view to recorded robosuite episodes, rendered from their simulator states.

    python scripts/render_camera.py --camera table_front runs/lift_wm4/record/dataset

Every demo of every HDF5 file under the paths gets ``obs/<camera>_rgb`` (OpenGL rows, the
main camera's size, gzip as the recorder writes), one frame per recorded step from its
``states``; demos that have it already are left alone unless ``--force``. A world model
then reads it as ``world_model.cameras: [main, <camera>]``. The cameras are those of
:data:`envs.cameras.CAMERAS`; the files must come from chunkrl's robosuite recorder
(``env_name`` a robosuite task, ``states`` per step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", required=True, help="a camera of envs.cameras.CAMERAS")
    p.add_argument("--force", action="store_true", help="render demos that have it again")
    p.add_argument("paths", nargs="+", help="HDF5 files or folders of them")
    args = p.parse_args(argv)
    from envs.render import select_gl_backend

    select_gl_backend()
    import h5py

    from demos.reader import ReadReport, find_files
    from demos.layout import view_key
    from envs.cameras import place_camera, render_states
    from envs.robosuite_tasks import RobosuiteVectorEnv
    from envs.sim import SimOptions

    key, envs, done, started = view_key(args.camera), {}, 0, time.time()
    for path in find_files(args.paths, ReadReport()):
        with h5py.File(path, "r+") as f:
            data = f["data"]
            env_args = json.loads(data.attrs.get("env_args", "{}")).get("env", {})
            task = str(data.attrs.get("env_name", ""))
            for name in sorted(data):
                group = data[name]
                if "states" not in group:
                    raise SystemExit(f"{path}:{name} has no simulator states to render from "
                                     "(record it with chunkrl's robosuite recorder)")
                if key in group["obs"]:
                    if not args.force:
                        continue
                    del group["obs"][key]
                size = group["obs/agentview_rgb"].shape[1]
                fast = bool(env_args.get("fast_render", False))
                if (task, size, fast) not in envs:
                    env = RobosuiteVectorEnv(1, 1, SimOptions(image_size=size, fast_render=fast),
                                             task)
                    env.reset_group(0, 0)
                    slot = env.slots[0]
                    envs[task, size, fast] = (env, slot, place_camera(
                        slot.sim_env.sim.model._model, slot.renderer, args.camera))
                env, slot, cid = envs[task, size, fast]
                frames = render_states(slot.sim_env.sim, slot.renderer, cid,
                                       group["states"][()])
                group["obs"].create_dataset(key, data=frames, chunks=(1, size, size, 3),
                                            compression="gzip", compression_opts=1)
                done += 1
    for env, _, _ in envs.values():
        env.close()
    print(f"rendered {args.camera} for {done} demos in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
