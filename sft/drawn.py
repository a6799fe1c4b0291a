"""Demonstrations' main-camera frames drawn by a world model's state decoder.

A policy cloned on real frames acts differently on the frames a world model draws from
its predicted states (``env.world_model.frames=state``): on Lift the decoder leaves out
the gripper's fingers, and the SFT policy's world-model actions succeed 4.7% in the
simulator against 26% when it acts on real frames (benchmarks/RESULTS.md, "Frames drawn
from the predicted state"). RL in that world model then improves behaviour on frames the
real env never shows. With ``sft.drawn_frames`` a share of the behaviour-cloning samples
(``sft.drawn_share``) show, for the same recorded step and target chunk, the frame the
decoder draws from the step's recorded simulator state, so that the policy learns to act
alike on both. It can only be as good as the decoder: on Lift, whose decoder draws no
fingers, half the samples drawn gave a policy that never succeeds in the simulator (0%
against 33% without; RESULTS.md, "The state judge corrected by replays"): the drawn frames
do not say whether the gripper has closed, and the policy learnt to act without knowing.
"""

from __future__ import annotations

import numpy as np
import torch

from demos import Demo


def drawn_main_images(demos: list[Demo], world_model: str) -> list[np.ndarray]:
    """For each demo, uint8 [L,H,W,3]: the main camera drawn by ``world_model``'s decoder
    from the recorded simulator state before each of its L actions, at the size of the
    demo's own main images (nearest upsampling by a whole factor: a policy that
    area-averages them back sees the decoder's pixels exactly)."""
    from worldmodel.models import WorldModel, to_images

    model = WorldModel.load(world_model)
    if model.decoder is None:
        raise ValueError(f"sft.drawn_frames={world_model} has no state decoder: train one "
                         "with world_model.decoder.steps > 0")
    out = []
    for demo in demos:
        states = demo.extras.get("states")
        if states is None or len(states) < len(demo):
            raise ValueError(f"demonstration {demo.episode_id} ({demo.source}) has no "
                             "simulator state per step: sft.drawn_frames needs robosuite or "
                             "LIBERO recordings made by chunkrl (they keep them)")
        with torch.no_grad():
            frames = to_images(model.decoder.draw(
                torch.from_numpy(np.asarray(states[:len(demo)], np.float32))))[..., :3]
        size, drawn = demo.main_images.shape[1], frames.shape[1]
        if size % drawn:
            raise ValueError(f"the demonstrations' {size}-pixel frames are not a whole "
                             f"multiple of the decoder's {drawn}: record or read them at "
                             f"a multiple of {drawn} (env.image_size)")
        out.append(frames.repeat(size // drawn, 1).repeat(size // drawn, 2))
    return out
