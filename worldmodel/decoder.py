"""Frames drawn from the simulator's state: what the policy sees in a world model whose
dynamics are the state model's.

The Lift world model's frame predictor drifts over an episode: on the frames it generates
open loop the SFT policy's gripper command is the real frames' only 43-48% of the time from
the grasp on, and the actions it takes there succeed 2.3% in the simulator against 26% on
real frames (benchmarks/RESULTS.md, issue 17, sixteenth session). The state model
(:mod:`worldmodel.state_model`) predicts the simulator's state open loop well enough to
judge success (held-out AUC 0.985). A :class:`StateDecoder` draws each camera's frame from
a state, so that a world-model env (``env.world_model.frames: state``) shows frames that
drift only as far as the predicted state does, never by compounding its own pixels::

    frame(s) = m + h(U(W(phi((s - mu_s) / sigma_s))))
    phi(x) = [x, sin(2^k x), cos(2^k x) for k = 0..F-1]     (per entry; F = ``frequencies``)

``m`` the training frames' mean (the table, the robot's base: what never moves), ``phi``
NeRF's positional encoding, optional (where a link is, is a product of sines and cosines
of the joint angles before it; on Lift 6 octaves fitted the training frames closer but
drew held-out ones worse, benchmarks/RESULTS.md), ``W`` an MLP to a 4x4 feature map,
``U`` upsampling convolution levels to the frame size (four to 64x64) and ``h`` a
convolution to the cameras' channels, zero at the start (the decoder starts as the mean
frame). The loss is L1 weighted ``1 + CHANGE_WEIGHT`` where the target differs from
``m`` by more than ``CHANGE_THRESHOLD`` (the arm and the object: the pixels the policy
reads), as the frame predictor's loss weights the pixels that change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from worldmodel.fit import fit_steps
from worldmodel.models import CHANGE_THRESHOLD, CHANGE_WEIGHT, to_model_frames


@dataclass
class StateFrames:
    """Simulator states float32 [N,S] and the frames the cameras showed in them, uint8
    [N,H,W,C] (C: 3 per camera)."""

    states: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.states)


def state_frames(episodes) -> StateFrames:
    """Every frame of :class:`worldmodel.data.Episode` s whose simulator state was recorded
    (frames 0..L-1; the state after the last action is never stored)."""
    kept = [e for e in episodes if e.sim_states is not None]
    if not kept:
        raise ValueError("no episode has simulator states (robosuite and LIBERO recordings "
                         "keep them as data/demo_N/states)")
    return StateFrames(np.concatenate([e.sim_states for e in kept]).astype(np.float32),
                       np.concatenate([e.frames[:len(e.sim_states)] for e in kept]))


def _up(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")]
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 1, 1), nn.GroupNorm(4, cout),
                   nn.SiLU()]
    return nn.Sequential(*layers)


class StateDecoder(nn.Module):
    """Simulator state [...,S] -> the cameras' frames [...,C,H,W] in [-1, 1]; see the
    module docstring. ``image_size``: 4 x a power of two, at least 8. Level widths from
    the full size up: ``channels / 2`` (one convolution), then ``channels``, 2x, 4x, 8x
    and 8x beyond (two each)."""

    def __init__(self, state_dim: int, image_channels: int, image_size: int = 64,
                 channels: int = 32, frequencies: int = 0):
        super().__init__()
        levels = int(np.log2(image_size / 4)) if image_size >= 8 else 0
        if levels < 1 or 4 * 2 ** levels != image_size:
            raise ValueError(f"the state decoder draws frames of 4 x 2^k pixels (64, 128), "
                             f"not {image_size}")
        self.state_dim, self.image_channels = state_dim, image_channels
        self.image_size, self.channels, self.frequencies = image_size, channels, frequencies
        c = channels
        widths = [c // 2] + [c * min(2 ** i, 8) for i in range(levels)]  # fine to coarse
        self.base = widths[-1]
        self.mlp = nn.Sequential(nn.Linear(state_dim * (1 + 2 * frequencies), 512), nn.SiLU(),
                                 nn.Linear(512, 512),
                                 nn.SiLU(), nn.Linear(512, self.base * 16))
        self.up = nn.Sequential(*[_up(widths[i], widths[i - 1], 1 if i == 1 else 2)
                                  for i in range(levels, 0, -1)])
        self.head = nn.Conv2d(c // 2, image_channels, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("s_mean", torch.zeros(state_dim))
        self.register_buffer("s_std", torch.ones(state_dim))
        self.register_buffer("mean_frame", torch.zeros(image_channels, image_size, image_size))

    def spec(self) -> dict:
        """What rebuilds this decoder (its weights are its state_dict)."""
        return {"state_dim": self.state_dim, "image_channels": self.image_channels,
                "image_size": self.image_size, "channels": self.channels,
                "frequencies": self.frequencies}

    def fit(self, data: StateFrames) -> None:
        """mu, sigma of the states and the mean frame ``m`` of ``data``."""
        self.s_mean.copy_(torch.from_numpy(data.states.mean(0)))
        self.s_std.copy_(torch.from_numpy(data.states.std(0) + 1e-6))
        mean = np.zeros(data.frames.shape[1:], np.float64)
        for start in range(0, len(data), 4096):  # without a float copy of every frame
            mean += data.frames[start:start + 4096].sum(0)
        self.mean_frame.copy_(to_model_frames((mean / len(data)).astype(np.float32)
                                              .round().astype(np.uint8)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """States [...,S] -> frames [...,C,H,W] (unclamped: the loss sees the raw output)."""
        lead = states.shape[:-1]
        x = ((states - self.s_mean) / self.s_std).reshape(-1, self.state_dim)
        if self.frequencies:
            angles = x[:, :, None] * (2.0 ** torch.arange(self.frequencies, device=x.device))
            x = torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], 1)
        x = self.mlp(x)
        x = self.head(self.up(x.view(-1, self.base, 4, 4))) + self.mean_frame
        return x.view(*lead, *x.shape[1:])

    @torch.no_grad()
    def draw(self, states: torch.Tensor) -> torch.Tensor:
        """The frames of ``states`` [...,S], clamped to [-1, 1] (no gradient)."""
        return self(states).clamp(-1, 1)

    def loss(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Weighted L1 of the frames of ``states`` [B,S] against ``targets`` [B,C,H,W]
        (module docstring)."""
        moved = (targets - self.mean_frame).abs() > CHANGE_THRESHOLD
        weight = 1.0 + CHANGE_WEIGHT * moved.float()
        return ((self(states) - targets).abs() * weight).sum() / weight.sum()


def train_decoder(decoder: StateDecoder, data: StateFrames, steps: int, batch_size: int = 32,
                  lr: float = 1e-3, rng: np.random.Generator | None = None,
                  on_step=None, device="cpu", fit: bool = True) -> StateDecoder:
    """``steps`` AdamW steps (cosine decay) on random frames of ``data`` after fitting
    the normaliser and the mean frame to it (``fit``; False: a trained decoder goes on
    with its own); ``on_step(k, loss) -> bool`` after each (True stops the training)."""
    rng = rng or np.random.default_rng(0)
    if fit:
        decoder.fit(data)
    decoder.to(device)

    def batch_loss():
        rows = rng.integers(len(data), size=batch_size)
        loss = decoder.loss(torch.from_numpy(data.states[rows]).to(device),
                            to_model_frames(data.frames[rows]).to(device))
        return loss, (float(loss.detach()),)

    return fit_steps(decoder, steps, lr, batch_loss, on_step)


@torch.no_grad()
def decoder_psnr(decoder: StateDecoder, frames: np.ndarray, states: np.ndarray,
                 batch: int = 256) -> dict:
    """PSNR (dB) of the main camera's frames drawn from ``states`` [N,S] against the real
    ``frames`` uint8 [N,H,W,C]: over whole frames, and over the pixels where the real frame
    differs from the mean frame (``moving``: the arm and the object, what the policy reads;
    :func:`worldmodel.metrics.changed_pixels` against the mean frame)."""
    from worldmodel.metrics import changed_pixels, psnr, squared_error
    from worldmodel.models import to_images

    mean = to_images(decoder.mean_frame)[..., :3]
    sums = {"all": [0.0, 0], "moving": [0.0, 0]}
    for start in range(0, len(states), batch):
        real = frames[start:start + batch, ..., :3]
        drawn = to_images(decoder.draw(torch.from_numpy(states[start:start + batch])))[..., :3]
        moving = changed_pixels(np.broadcast_to(mean, real.shape), real[:, None])[:, 0]
        for name, where in (("all", np.ones(moving.shape, bool)), ("moving", moving)):
            err, count = squared_error(drawn, real, where)
            sums[name][0] += err
            sums[name][1] += count
    return {name: psnr(*v) for name, v in sums.items()}
