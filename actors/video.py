"""Episode videos: caption frames with the instruction and outcome, write browser-playable mp4s.

Frames are uint8 [H,W,3] RGB. Small env renders (e.g. 64x64) are upscaled by an integer
factor (nearest neighbour) so the caption is readable. Every frame of one video gets the
same layout (see :func:`caption_layout`), so the mp4 has a single frame size.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_WIDTH = 256
"""Frames narrower than this are upscaled by an integer factor to reach it."""

CAPTION_LINES = 3
"""Lines reserved for the instruction; longer text is truncated with an ellipsis."""

STATUS_COLOURS = {"success": (40, 170, 60), "failure": (200, 40, 40)}
"""Label fill per status; any other status (e.g. "running") gets ``OTHER_STATUS_COLOUR``."""

OTHER_STATUS_COLOUR = (110, 110, 110)
BAND_COLOUR = (20, 20, 20)
TEXT_COLOUR = (255, 255, 255)
ELLIPSIS = "..."  # ASCII: the bitmap fallback font has no U+2026 glyph

# The label column is sized for the widest usual status so the text layout does not
# depend on the status (a video's frames may carry different ones).
_LABEL_SIZING_TEXTS = ("success", "failure", "running")


@dataclass(frozen=True)
class CaptionLayout:
    """Geometry of an annotated frame; boxes are ``(x0, y0, x1, y1)``, end-exclusive.

    The caption band spans rows ``[0, band_height)``; the upscaled input sits in
    ``image_box``; any remaining right column / bottom row is black padding that makes
    both output sizes even (H.264 yuv420p needs that).
    """

    scale: int
    font_size: int
    band_height: int
    line_height: int
    margin: int
    label_box: tuple[int, int, int, int]
    text_width: int
    image_box: tuple[int, int, int, int]
    out_width: int
    out_height: int

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """Shape of an annotated frame, ``(out_height, out_width, 3)``."""
        return (self.out_height, self.out_width, 3)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px, or its fixed bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow < 10.1 has no size argument; builds without FreeType cannot scale.
        return ImageFont.load_default()


def _even(n: int) -> int:
    return n + (n % 2)


def _text_width(font, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


def _line_height(font) -> int:
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent
    return font.getbbox("Ag")[3]


@lru_cache(maxsize=32)
def caption_layout(height: int, width: int) -> CaptionLayout:
    """Layout for annotating an ``height`` x ``width`` frame (fixed for given sizes)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    scale = max(1, -(-MIN_WIDTH // width))
    img_w, img_h = width * scale, height * scale
    font_size = max(10, img_w // 20)
    font = _font(font_size)
    margin = max(2, font_size // 3)
    line_h = _line_height(font) + max(1, font_size // 6)
    band_h = _even(2 * margin + CAPTION_LINES * line_h)
    label_w = max(_text_width(font, t) for t in _LABEL_SIZING_TEXTS) + 2 * margin
    label_box = (img_w - margin - label_w, margin, img_w - margin, margin + line_h)
    # Keep at least a sliver for text even when the frame is barely wider than the label.
    text_w = max(font_size, label_box[0] - 2 * margin)
    return CaptionLayout(
        scale=scale, font_size=font_size, band_height=band_h, line_height=line_h,
        margin=margin, label_box=label_box, text_width=text_w,
        image_box=(0, band_h, img_w, band_h + img_h),
        out_width=_even(img_w), out_height=_even(band_h + img_h),
    )


def _fit(font, text: str, width: int) -> str:
    """Longest prefix of ``text`` whose rendering fits in ``width`` px (at least one char)."""
    cut = len(text)
    while cut > 1 and _text_width(font, text[:cut]) > width:
        cut -= 1
    return text[:cut]


def wrap_text(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` px; words too long for a line are split.

    More than ``max_lines`` lines: the last kept line ends with an ellipsis.
    """
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(font, candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while _text_width(font, word) > width:
            head = _fit(font, word, width)
            lines.append(head)
            word = word[len(head):]
        current = word
    if current:
        lines.append(current)
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and _text_width(font, last + ELLIPSIS) > width:
        last = last[:-1]
    return lines[: max_lines - 1] + [last.rstrip() + ELLIPSIS]


def _drawable(text: str, font) -> str:
    # The bitmap fallback font only encodes latin-1; FreeType handles any text.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _render_band(layout: CaptionLayout, text: str, status: Optional[str]) -> np.ndarray:
    """The caption band, uint8 [band_height, out_width, 3]."""
    font = _font(layout.font_size)
    band = Image.new("RGB", (layout.out_width, layout.band_height), BAND_COLOUR)
    draw = ImageDraw.Draw(band)
    lines = wrap_text(_drawable(text, font), font, layout.text_width, CAPTION_LINES)
    for i, line in enumerate(lines):
        draw.text((layout.margin, layout.margin + i * layout.line_height), line,
                  fill=TEXT_COLOUR, font=font)
    if status is not None:
        x0, y0, x1, y1 = layout.label_box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1),
                       fill=STATUS_COLOURS.get(status, OTHER_STATUS_COLOUR))
        label = _fit(font, _drawable(status, font), x1 - x0 - 2 * layout.margin)
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text(((x0 + x1) // 2, (y0 + y1) // 2), label, fill=TEXT_COLOUR, font=font,
                      anchor="mm")
        else:  # the bitmap font has no anchors
            draw.text((x0 + layout.margin, y0), label, fill=TEXT_COLOUR, font=font)
    return np.asarray(band, dtype=np.uint8)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H,W,3] frame, got {frame.dtype} {frame.shape}")
    return frame


def _compose(layout: CaptionLayout, band: np.ndarray, frame: np.ndarray) -> np.ndarray:
    out = np.zeros(layout.out_shape, dtype=np.uint8)
    out[: layout.band_height] = band
    x0, y0, x1, y1 = layout.image_box
    # Nearest-neighbour integer upscale: repeat each pixel scale x scale times.
    out[y0:y1, x0:x1] = frame.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)
    return out


def annotate(frame: np.ndarray, text: str, status: Optional[str]) -> np.ndarray:
    """New uint8 frame: a caption band with ``text`` above the (upscaled) ``frame``.

    ``status`` (if not None) is drawn as a label in the band's top-right corner: green
    for "success", red for "failure", grey otherwise. The output size depends only on
    the input size (:func:`caption_layout`) and is even in both dimensions.
    """
    frame = _check_frame(frame)
    layout = caption_layout(frame.shape[0], frame.shape[1])
    return _compose(layout, _render_band(layout, text, status), frame)


def _check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(frames) == 0:
        raise ValueError("write_mp4: no frames to write")
    checked = [_check_frame(f) for f in frames]
    shape = checked[0].shape
    for i, frame in enumerate(checked):
        if frame.shape != shape:
            raise ValueError(
                f"write_mp4: frame {i} has shape {frame.shape}, frame 0 has {shape}")
    if shape[0] % 2 or shape[1] % 2:
        raise ValueError(
            f"write_mp4: H.264 yuv420p needs even sizes, got {shape[0]}x{shape[1]}")
    return checked


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int) -> Path:
    """Write ``frames`` (uint8 [H,W,3], equal shapes, even H and W) as an H.264 mp4.

    libx264 / yuv420p with the index at the front (``+faststart``) so browsers can play
    it while it loads. Written to a temporary name in the target folder and renamed,
    so a reader never sees a partial file. Returns the final path.

    Raises ValueError (before touching the disk) for no frames, differing shapes, a
    frame that is not uint8 [H,W,3], odd sizes (use :func:`annotate`, which pads), or
    ``fps`` <= 0.
    """
    frames = _check_frames(frames)
    height, width = frames[0].shape[:2]
    if fps <= 0:
        raise ValueError(f"write_mp4: fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder so os.replace is an atomic rename; ".mp4" so ffmpeg picks the muxer.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.mp4")
    try:
        _encode(tmp, frames, (width, height), fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _encode(path: Path, frames: Sequence[np.ndarray], size: tuple[int, int], fps: int) -> None:
    # Imported here: an actor that records no video starts without ffmpeg's bundle.
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        # Sizes are already even; the default (16) would rescale and blur the caption.
        macro_block_size=1,
        ffmpeg_log_level="error",
        # One thread: videos are encoded inside actor processes next to the envs.
        output_params=["-movflags", "+faststart", "-threads", "1"],
    )
    writer.send(None)  # start the ffmpeg process
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


class EpisodeVideo:
    """Frames of one episode, written with a caption once its outcome is known.

    Memory is bounded by ``max_frames``: whenever more would be kept, every other kept
    frame is dropped and the sampling stride doubles, so the kept frames are always
    every ``stride``-th frame of the episode (0, stride, 2*stride, ...). The video is
    written at ``fps`` regardless, so a strided episode plays ``stride`` times faster.
    """

    def __init__(self, instruction: str, fps: int, max_frames: int):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.instruction = instruction
        self.fps = fps
        self.max_frames = max_frames
        self.stride = 1
        self.seen = 0
        self.frames: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        """Record ``frame`` (copied: the caller may reuse its buffer)."""
        frame = _check_frame(frame)
        if self.frames and frame.shape != self.frames[0].shape:
            raise ValueError(f"frame shape {frame.shape} differs from {self.frames[0].shape}")
        index, self.seen = self.seen, self.seen + 1
        if index % self.stride:
            return
        self.frames.append(frame.copy())
        if len(self.frames) > self.max_frames:
            self.frames = self.frames[::2]
            self.stride *= 2

    def finish(self, path: str | os.PathLike, success: bool) -> Path:
        """Caption every frame with the instruction and "success"/"failure"; write the mp4.

        Raises ValueError if no frame was added. Frees the frames afterwards.
        """
        if not self.frames:
            raise ValueError("EpisodeVideo.finish: no frames were added")
        first = self.frames[0]
        layout = caption_layout(first.shape[0], first.shape[1])
        # One band for the whole video: the caption is the same on every frame.
        band = _render_band(layout, self.instruction, "success" if success else "failure")
        annotated = [_compose(layout, band, f) for f in self.frames]
        self.frames = []
        return write_mp4(path, annotated, self.fps)


class VideoSampler:
    """Which episodes get a video.

    Training: episodes 0, n, 2n, ... of this actor (``every_n_episodes`` = 0: none).
    Evaluation: the first ``per_task`` trials of each task.
    """

    def __init__(self, every_n_episodes: int, per_task: int):
        if every_n_episodes < 0 or per_task < 0:
            raise ValueError(f"every_n_episodes and per_task must be >= 0, "
                             f"got {every_n_episodes}, {per_task}")
        self.every_n_episodes = every_n_episodes
        self.per_task = per_task

    def want_train(self, episode_counter: int) -> bool:
        """True when training episode ``episode_counter`` (0-based) should be filmed."""
        return self.every_n_episodes > 0 and episode_counter % self.every_n_episodes == 0

    def want_eval(self, task_id: int, trial_id: int) -> bool:
        """True for trials ``0 .. per_task - 1`` of every task."""
        return trial_id < self.per_task
