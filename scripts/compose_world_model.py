"""A world model whose views each come from their own trained predictor
(:class:`worldmodel.views.ViewsGenerator`), with one world model's success model.

    python scripts/compose_world_model.py --out runs/lift_wm8/composed/world_model.pt \\
        --success runs/lift_wm8/world_model/world_model.pt \\
        --view main=runs/lift_wm3/world_model/world_model.pt \\
        --view table_front=runs/lift_wm8/world_model/world_model.pt

The composed model has the ``--success`` file's cameras, success model, action bounds and
image size; ``--view CAMERA=FILE`` gives each camera the generator of FILE, which must
make that camera and be conditioned on cameras the composed model has (its views of the
history are handed to it). The result is an ordinary ``world_model.pt`` for
``env.world_model.checkpoint``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compose(success_path: str, views: dict[str, str]):
    """The composed :class:`worldmodel.models.WorldModel` (see the module docstring)."""
    import torch

    from worldmodel.models import WorldModel
    from worldmodel.views import ViewsGenerator

    base = WorldModel.load(success_path)
    missing = [c for c in base.cameras if c not in views]
    if missing or set(views) - set(base.cameras):
        raise ValueError(f"give --view for exactly the cameras {list(base.cameras)}")
    parts, inputs, outputs, lows, highs = [], [], [], [], []
    for camera in base.cameras:
        source = WorldModel.load(views[camera])
        if camera not in source.cameras or set(source.cameras) - set(base.cameras):
            raise ValueError(f"{views[camera]} makes {list(source.cameras)}: it must make "
                             f"{camera} from cameras of {list(base.cameras)}")
        if source.image_size != base.image_size:
            raise ValueError(f"{views[camera]} makes {source.image_size}-px frames, "
                             f"{success_path} {base.image_size}-px")
        parts.append(source.generator)
        inputs.append([base.cameras.index(c) for c in source.cameras])
        outputs.append(source.cameras.index(camera))
        lows.append(source.action_low)
        highs.append(source.action_high)
    generator = ViewsGenerator(parts, inputs, outputs, base.action_low, base.action_high,
                               torch.stack(lows), torch.stack(highs))
    info = dict(base.info, composed={"success": success_path, "views": views})
    return WorldModel(generator, base.scorer, base.action_low.numpy(),
                      base.action_high.numpy(), base.image_size, info, base.cameras)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the world_model.pt to write")
    p.add_argument("--success", required=True,
                   help="the world model whose cameras, success model and bounds it keeps")
    p.add_argument("--view", action="append", default=[], metavar="CAMERA=FILE",
                   help="the world model whose generator makes CAMERA (once per camera)")
    args = p.parse_args(argv)
    views = dict(v.split("=", 1) for v in args.view)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = compose(args.success, views)
    model.save(out)
    print(f"wrote {out}: cameras {list(model.cameras)}, " + ", ".join(
        f"{c} from {views[c]}" for c in model.cameras))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
