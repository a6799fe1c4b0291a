"""The world model's two learned parts, the interfaces the env runs them through, and the
file that holds them.

A :class:`FrameGenerator` maps the last K frames and a chunk of T actions to the T frames
those actions lead to; a :class:`SuccessScorer` maps one frame to the probability that the
task its instruction names is achieved in it. Frames are float [.., C, H, W] in [-1, 1],
C = 3 x the cameras the model sees (``cameras``: main, then wrist, stacked);
actions are normalised with the training data's 1st/99th percentiles, as RLinf's world
model takes them:
``2 (a - q01) / (q99 - q01) - 1`` on every dimension, gripper included (the env clips them
to [-1, 1] when it steps; training sees the data as it is).

chunkrl trains its own at CPU scale (:class:`ConvFramePredictor`, :class:`SuccessCNN`);
a latent video model (a diffusers UNet or DiT over an ``AutoencoderKL``) fits the same
``generate`` signature. :class:`WorldModel` bundles a generator, a scorer and the action
statistics, and is what ``world_model.pt`` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "chunkrl-world-model-v1"


class FrameGenerator(Protocol):
    """History [B,K,C,H,W] and normalised actions [B,T,D] -> the next frames [B,T,C,H,W]."""

    condition_frames: int
    chunk: int
    image_channels: int  # C: 3 per camera

    def generate(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The T frames that follow ``history`` under ``actions`` (no gradient)."""
        ...


class SuccessScorer(Protocol):
    """Frames [N,C,H,W] and their N instructions -> the probability [N] that the task is
    achieved in each."""

    def score(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """The probability of success of each frame (no gradient)."""
        ...


def to_model_frames(images: np.ndarray) -> torch.Tensor:
    """uint8 [...,H,W,C] -> float [...,C,H,W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -3)


def to_images(frames: torch.Tensor) -> np.ndarray:
    """float [...,C,H,W] in [-1, 1] -> uint8 [...,H,W,C]."""
    x = frames.detach().float().clamp(-1, 1).add(1.0).mul(127.5).round()
    return x.movedim(-3, -1).to(torch.uint8).cpu().numpy()


CHANGE_WEIGHT = 4.0
CHANGE_THRESHOLD = 0.1  # on the [-1, 1] scale: worldmodel.metrics' 0.05 of [0, 1]


def change_weights(history: torch.Tensor, targets: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """[B,T,V,1,H,W], one map per camera (V = C / 3): ``1 + CHANGE_WEIGHT`` where a
    target pixel differs from the last history frame by more than ``CHANGE_THRESHOLD`` in
    one of that camera's channels, else 1; 0 where ``mask`` [B,T] is False. Per camera:
    a pixel that moves in one view says nothing about the same pixel of another."""
    b, t, ch, h, w = targets.shape
    diff = (targets - history[:, -1:]).abs().view(b, t, ch // 3, 3, h, w)
    changed = diff.amax(3, keepdim=True) > CHANGE_THRESHOLD
    return (1.0 + CHANGE_WEIGHT * changed.float()) * mask[:, :, None, None, None, None].float()


def view_l1(pred: torch.Tensor, targets: torch.Tensor,
            weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per camera: the weighted L1 sum of frames [B,T,C,H,W] and its weights' sum, each
    [V] (``weight`` from :func:`change_weights`, broadcast over a camera's 3 channels)."""
    b, t, ch, h, w = targets.shape
    err = (pred - targets).abs().view(b, t, ch // 3, 3, h, w) * weight
    return err.sum((0, 1, 3, 4, 5)), 3 * weight.sum((0, 1, 3, 4, 5))


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(4, cout), nn.SiLU())


class ConvFramePredictor(nn.Module):
    """A deterministic action-conditioned frame predictor: a three-level U-Net over the K
    stacked history frames; the chunk's actions (an MLP of all T x D) scale and shift
    the features of every decoder level (FiLM). It predicts the change of each of the T
    frames from the last history frame: a still scene costs the network nothing.
    ``image_channels``: 3 per camera, the views stacked."""

    def __init__(self, condition_frames: int, chunk: int, action_dim: int,
                 channels: int = 32, image_channels: int = 3):
        super().__init__()
        self.condition_frames, self.chunk, self.action_dim = condition_frames, chunk, action_dim
        self.image_channels = image_channels
        c = channels
        self.widths = (c, 2 * c, 4 * c, 4 * c)
        self.stem = _block(image_channels * condition_frames, c)
        self.down = nn.ModuleList([_block(c, 2 * c, 2), _block(2 * c, 4 * c, 2),
                                   _block(4 * c, 4 * c, 2)])
        self.up = nn.ModuleList([_block(8 * c, 4 * c), _block(6 * c, 2 * c), _block(3 * c, c)])
        self.film = nn.Sequential(nn.Linear(chunk * action_dim, 8 * c), nn.SiLU(),
                                  nn.Linear(8 * c, 2 * (4 * c + 4 * c + 2 * c + c)))
        self.head = nn.Conv2d(c, image_channels * chunk, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # starts as "copy the last frame"
        nn.init.zeros_(self.head.bias)

    def forward(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """History [B,K,C,H,W], normalised actions [B,T,D] -> frames [B,T,C,H,W]."""
        b, k, ch, h, w = history.shape
        skips = [self.stem(history.reshape(b, k * ch, h, w))]
        for down in self.down:
            skips.append(down(skips[-1]))
        film = self.film(actions.reshape(b, -1))
        widths = (self.widths[3], self.widths[2], self.widths[1], self.widths[0])
        scale_shift = torch.split(film, [2 * n for n in widths], dim=1)

        def modulate(x, level):
            scale, shift = scale_shift[level].chunk(2, dim=1)
            return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

        x = modulate(skips[3], 0)
        for level, (up, skip) in enumerate(zip(self.up, reversed(skips[:3])), start=1):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = modulate(up(torch.cat([x, skip], 1)), level)
        delta = self.head(x).reshape(b, self.chunk, ch, h, w)
        return (history[:, -1:] + delta).clamp(-1.0, 1.0)

    def generate(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The next ``chunk`` frames (no gradient)."""
        with torch.no_grad():
            return self(history, actions)

    def loss(self, history: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
        """L1 of the predicted frames, each pixel that changes from the last real frame
        before it weighted ``1 + CHANGE_WEIGHT`` (most pixels are still: an unweighted loss
        is won by copying), steps past the episode's end (``mask`` [B,N] False) left out.
        With several cameras each is weighted by its own changes and normalised by its
        own weights, and the loss is their mean: a view whose motion fills the frame
        would otherwise outweigh one where a few pixels move, and the predictor would
        copy the quieter view's last frame (RESULTS.md, "A camera level with the table").

        ``actions`` [B,N,D] may hold several chunks (N = R x T): the predictor is then
        unrolled R calls as the env runs it, each conditioned on the last K frames *so
        far*, its own earlier predictions included, and the gradient flows back through
        them, so it learns to correct the drift of its own frames, which a one-call loss
        (R = 1) never shows it."""
        t, k = self.chunk, self.condition_frames
        real = torch.cat([history, targets], 1)  # the change weights' reference frames
        views = targets.shape[2] // 3
        total = history.new_zeros(views)
        weight_sum = history.new_zeros(views)
        for start in range(0, actions.shape[1], t):
            part = slice(start, start + t)
            pred = self(history, actions[:, part])
            weight = change_weights(real[:, start + k - 1:start + k], targets[:, part],
                                    mask[:, part])
            err, norm = view_l1(pred, targets[:, part], weight)
            total, weight_sum = total + err, weight_sum + norm
            history = torch.cat([history, pred], 1)[:, -k:]
        return (total / weight_sum.clamp(min=1.0)).mean()

    def spec(self) -> dict:
        """What rebuilds it (:func:`build_generator`)."""
        return {"kind": "conv", "condition_frames": self.condition_frames,
                "chunk": self.chunk, "action_dim": self.action_dim, "channels": self.widths[0],
                "image_channels": self.image_channels}


class SuccessCNN(nn.Module):
    """One frame and its instruction -> the logit of "the task is achieved": four strided
    convolutions, each followed by a scale and shift per channel computed from the
    instruction (a bag of hashed words, as the CNN policy reads it: "the red square"
    selects red features before they are pooled), global average pooling, a linear layer.
    RLinf's ResnetRM sees the frame alone; one scene can hold the named target and others,
    so chunkrl's reads the instruction too. ``image_channels``: 3 per camera."""

    def __init__(self, channels: int = 16, vocab_size: int = 1024, embed_dim: int = 32,
                 image_channels: int = 3):
        super().__init__()
        c, self.vocab_size = channels, vocab_size
        self.channels, self.image_channels = channels, image_channels
        widths = (c, 2 * c, 4 * c, 4 * c)
        self.convs = nn.ModuleList()
        cin = image_channels
        for cout in widths:
            self.convs.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(4, cout)))
            cin = cout
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="sum")
        self.film = nn.Linear(embed_dim, 2 * sum(widths))
        nn.init.zeros_(self.film.weight)  # starts unconditioned
        nn.init.zeros_(self.film.bias)
        self.widths = widths
        self.head = nn.Linear(cin, 1)

    def forward(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """Frames [N,C,H,W] and N instructions -> logits [N]."""
        from models.cnn_policy import hash_words

        ids, offsets = hash_words(instructions, self.vocab_size)
        film = self.film(self.embed(ids.to(frames.device), offsets.to(frames.device)))
        parts = torch.split(film, [2 * w for w in self.widths], dim=1)
        x = frames
        for conv, part in zip(self.convs, parts):
            scale, shift = part.chunk(2, dim=1)
            x = F.silu(conv(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return self.head(x.mean((2, 3))).squeeze(-1)

    def score(self, frames: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """The probability of success of each frame (no gradient)."""
        with torch.no_grad():
            return torch.sigmoid(self(frames, instructions))


def normalise_actions(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    """``2 (a - low) / (high - low) - 1`` per dimension; 0 where ``high == low``."""
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, 2 * (actions - low) / safe - 1, torch.zeros_like(actions))


class WorldModel(nn.Module):
    """A generator, a success scorer, and the action bounds (q01, q99) they were trained
    with; ``cameras`` the views their frames stack (main first); ``info`` keeps the sizes
    and the training config; ``state_model`` (or None) predicts the simulator's state
    from the actions (:mod:`worldmodel.state_model`), and ``decoder`` (or None) draws the
    cameras' frames from such a state (:mod:`worldmodel.decoder`)."""

    def __init__(self, generator: nn.Module, scorer: SuccessCNN,
                 action_low: np.ndarray, action_high: np.ndarray, image_size: int,
                 info: dict | None = None, cameras: tuple[str, ...] = ("main",),
                 state_model: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        if generator.image_channels != 3 * len(cameras) or \
                scorer.image_channels != 3 * len(cameras):
            raise ValueError(f"{len(cameras)} cameras need {3 * len(cameras)} image channels; "
                             f"the generator has {generator.image_channels}, the success "
                             f"model {scorer.image_channels}")
        self.generator, self.scorer, self.image_size = generator, scorer, image_size
        self.cameras = tuple(cameras)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))
        self.info = dict(info or {})
        self.state_model = state_model
        self.decoder = decoder

    @property
    def condition_frames(self) -> int:
        """K: the frames each generation is conditioned on."""
        return self.generator.condition_frames

    def untrained(self) -> set[str]:
        """The frame parts a state-only training left as initialised (``generator``,
        ``scorer``): ``world_model.steps`` / ``success_steps`` 0 and no ``init`` (files
        from before this record say nothing: trained)."""
        w = self.info.get("world_model", {})  # the training run's section, as saved
        if w.get("init", ""):
            return set()
        return {part for part, key in (("generator", "steps"), ("scorer", "success_steps"))
                if w.get(key) == 0}

    @property
    def chunk(self) -> int:
        """T: the frames (and actions) of one generation."""
        return self.generator.chunk

    def generate(self, history: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The N frames that N normalised actions [B,N,D] lead to from ``history``
        [B,K,C,H,W]: N / T generations of T frames, each conditioned on the last K frames
        so far (no gradient)."""
        t, k = self.chunk, self.condition_frames
        if actions.shape[1] % t:
            raise ValueError(f"the world model generates {t} frames per call; got chunks of "
                             f"{actions.shape[1]} actions (set actor.actions_per_chunk to a "
                             f"multiple of {t})")
        parts = []
        for start in range(0, actions.shape[1], t):
            parts.append(self.generator.generate(history, actions[:, start:start + t]))
            history = torch.cat([history, parts[-1]], 1)[:, -k:]
        return torch.cat(parts, 1)

    @torch.no_grad()
    def from_states(self, first: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The frames [B,N,C,H,W] the decoder draws for the simulator states the state
        model predicts from ``first`` [B,S] under env-unit ``actions`` [B,N,D] (what the
        env shows with ``frames: state``)."""
        if self.state_model is None or self.decoder is None:
            raise ValueError("frames from states need a world model with a state model and "
                             "a decoder (world_model.state.steps, world_model.decoder.steps)")
        from worldmodel.ensemble import shown_rollout

        return self.decoder.draw(shown_rollout(self.state_model, first, actions))

    def normalise(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [...,D] -> the generator's input."""
        return normalise_actions(actions, self.action_low, self.action_high)

    def save(self, path: Path) -> Path:
        """Write the models and what rebuilds them to ``path``."""
        torch.save({"format": FORMAT, "image_size": self.image_size,
                    "cameras": list(self.cameras), "generator": self.generator.spec(),
                    "scorer": {"channels": self.scorer.channels,
                               "vocab_size": self.scorer.vocab_size,
                               "image_channels": self.scorer.image_channels},
                    "state_model": None if self.state_model is None
                    else self.state_model.spec(),
                    "decoder": None if self.decoder is None else self.decoder.spec(),
                    "state_dict": self.state_dict(), "info": self.info}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> "WorldModel":
        """A world model from :meth:`save`'s file; a wrong file says what it is not."""
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"cannot read the world model {path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a world model (a train_world_model run's "
                             "world_model.pt)")
        g = state["generator"]
        judge = state.get("state_model")  # files from before it have none
        if judge is not None:
            from worldmodel.ensemble import build_state_model

            judge = build_state_model(judge)
        decoder = state.get("decoder")
        if decoder is not None:
            from worldmodel.decoder import StateDecoder

            decoder = StateDecoder(**decoder)
        # files from before world_model.cameras hold one camera (3 channels, no key)
        model = cls(build_generator(g, state["image_size"]), SuccessCNN(**state["scorer"]),
                    np.zeros(g["action_dim"]),
                    np.zeros(g["action_dim"]), state["image_size"], state.get("info"),
                    tuple(state.get("cameras", ["main"])), judge, decoder)
        model.load_state_dict(state["state_dict"])
        return model.eval()


def build_generator(spec: dict, image_size: int) -> nn.Module:
    """The frame generator a :meth:`spec` describes: ``conv`` (:class:`ConvFramePredictor`),
    ``diffusion`` (:class:`worldmodel.diffusion.DiffusionFramePredictor`) or ``views``
    (:class:`worldmodel.views.ViewsGenerator`, one of these per camera)."""
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "conv":
        return ConvFramePredictor(**args)
    if spec["kind"] == "diffusion":
        from worldmodel.diffusion import DiffusionFramePredictor

        return DiffusionFramePredictor(image_size=image_size, **args)
    if spec["kind"] == "views":
        from worldmodel.views import ViewsGenerator

        d, v = spec["action_dim"], len(spec["parts"])
        # the bounds are buffers: the state dict fills them
        return ViewsGenerator([build_generator(p, image_size) for p in spec["parts"]],
                              spec["inputs"], spec["outputs"], torch.zeros(d),
                              torch.zeros(d), torch.zeros(v, d), torch.zeros(v, d))
    raise ValueError(f"unknown frame generator {spec['kind']!r}; valid: conv, diffusion, "
                     "views")


def from_config(w, action_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                info: dict | None = None) -> WorldModel:
    """A fresh (untrained) world model of the sizes a :class:`configs.WorldModelConfig`
    names, for ``action_dim``-D actions normalised with ``action_low``/``action_high``."""
    image_channels = 3 * len(w.cameras)
    spec = {"kind": w.generator, "condition_frames": w.condition_frames, "chunk": w.chunk,
            "action_dim": action_dim, "channels": w.channels, "image_channels": image_channels}
    if w.generator == "diffusion":
        spec["sampling_steps"] = w.sampling_steps
    return WorldModel(build_generator(spec, w.image_size),
                      SuccessCNN(w.success_channels, image_channels=image_channels),
                      action_low, action_high, w.image_size, info, tuple(w.cameras))

