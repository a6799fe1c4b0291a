"""A diffusion frame generator: a diffusers ``UNet2DModel`` denoising the chunk's frames,
conditioned on the history and the actions, sampled with DDIM in a few steps.

As RLinf's OpenSora world model: the actions enter through an MLP whose output is added
to the timestep embedding (diffusers' ``class_embed_type="identity"``); the conditioning
frames are fixed. Unlike it, at CPU scale: pixels rather than VAE latents, the K history
frames stacked as input channels beside the T noisy frames, and the target is the change
of each frame from the last history frame (``(frame - last) / 2``, in [-1, 1]), so a still
scene is the easy zero. Training minimises the MSE of the predicted noise
(epsilon-prediction) over uniformly drawn timesteps; sampling runs ``sampling_steps``
DDIM steps (eta 0) from Gaussian noise, so two calls with the same inputs give different
futures unless a generator is given. The latent version for 256² frames on a GPU is the
same module over an ``AutoencoderKL``'s latents.
"""

from __future__ import annotations

import torch
from torch import nn

TRAIN_TIMESTEPS = 1000


class DiffusionFramePredictor(nn.Module):
    """History [B,K,C,H,W] + normalised actions [B,T,D] -> T frames, by denoising
    (``image_channels`` C: 3 per camera)."""

    def __init__(self, condition_frames: int, chunk: int, action_dim: int, channels: int = 32,
                 image_size: int = 64, sampling_steps: int = 4, image_channels: int = 3):
        super().__init__()
        from diffusers import DDIMScheduler, UNet2DModel

        self.condition_frames, self.chunk, self.action_dim = condition_frames, chunk, action_dim
        self.channels, self.sampling_steps = channels, sampling_steps
        self.image_channels = image_channels
        c = channels
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=image_channels * (condition_frames + chunk),
            out_channels=image_channels * chunk, block_out_channels=(c, 2 * c, 4 * c),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=1,
            norm_num_groups=min(8, c), attention_head_dim=min(32, 4 * c),
            class_embed_type="identity")
        embed = 4 * c  # UNet2DModel's time-embedding width
        self.action_mlp = nn.Sequential(nn.Linear(chunk * action_dim, embed), nn.SiLU(),
                                        nn.Linear(embed, embed))
        self.scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS,
                                       beta_schedule="squaredcos_cap_v2", clip_sample=True)

    def _denoise(self, noisy: torch.Tensor, history: torch.Tensor, t: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = history.shape
        x = torch.cat([history.reshape(b, -1, h, w), noisy.reshape(b, -1, h, w)], 1)
        return self.unet(x, t, class_labels=self.action_mlp(actions.reshape(b, -1))).sample

    def loss(self, history: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
        """MSE of the predicted noise on the frames' changes, steps past the episode's end
        (``mask`` [B,T] False) left out."""
        b = history.shape[0]
        x0 = ((targets - history[:, -1:]) / 2).clamp(-1, 1)
        noise = torch.randn_like(x0)
        t = torch.randint(0, TRAIN_TIMESTEPS, (b,), device=x0.device)
        noisy = self.scheduler.add_noise(x0.flatten(1), noise.flatten(1), t).view_as(x0)
        pred = self._denoise(noisy, history, t, actions).view_as(noise)
        weight = mask[:, :, None, None, None].float().expand_as(noise)
        return ((pred - noise) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)

    def generate(self, history: torch.Tensor, actions: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """The next ``chunk`` frames: ``sampling_steps`` DDIM steps (no gradient)."""
        b, _, ch, h, w = history.shape
        with torch.no_grad():
            x = torch.randn((b, self.chunk, ch, h, w), generator=generator,
                            device=history.device)
            self.scheduler.set_timesteps(self.sampling_steps, device=history.device)
            for t in self.scheduler.timesteps:
                eps = self._denoise(x, history, t.expand(b), actions).view_as(x)
                x = self.scheduler.step(eps.flatten(1), t, x.flatten(1)).prev_sample.view_as(x)
            return (history[:, -1:] + 2 * x).clamp(-1.0, 1.0)

    def forward(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sampled frames (evaluation); training uses :meth:`loss`."""
        return self.generate(history, actions)

    def spec(self) -> dict:
        """What rebuilds it (:func:`worldmodel.models.build_generator`)."""
        return {"kind": "diffusion", "condition_frames": self.condition_frames,
                "chunk": self.chunk, "action_dim": self.action_dim, "channels": self.channels,
                "sampling_steps": self.sampling_steps, "image_channels": self.image_channels}
