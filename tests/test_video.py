"""Episode videos: captions, mp4 round trip through ffmpeg, frame sampling."""

from __future__ import annotations

import imageio
import numpy as np
import pytest

from actors.video import (
    CAPTION_LINES, ELLIPSIS, EpisodeVideo, VideoSampler, _font, annotate, caption_layout,
    wrap_text, write_mp4,
)

LONG_TEXT = ("pick up the red block on the left of the table and put it in the top drawer "
             "of the wooden cabinet next to the sink, then close the drawer gently")


def moving_square(i: int, size: int = 64) -> np.ndarray:
    """A textured background with a coloured square that moves with ``i``."""
    y, x = np.mgrid[0:size, 0:size]
    frame = np.stack([x * 3, y * 3, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    top = 4 + 3 * i
    frame[top:top + 16, top:top + 16] = (230, 40, 200)
    return frame


def upscaled(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def image_region(frame: np.ndarray, layout) -> np.ndarray:
    x0, y0, x1, y1 = layout.image_box
    return frame[y0:y1, x0:x1]


def read_mp4(path):
    with imageio.get_reader(path, "ffmpeg") as reader:
        meta = reader.get_meta_data()
        frames = [np.asarray(f) for f in reader]
    return meta, frames


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def label_pixels(frame: np.ndarray, layout) -> np.ndarray:
    x0, y0, x1, y1 = layout.label_box
    return frame[y0:y1, x0:x1].reshape(-1, 3).astype(int)


def green_fraction(pixels: np.ndarray) -> float:
    r, g, b = pixels.T
    return float(((g > 120) & (g > r + 60) & (g > b + 60)).mean())


# --- annotate -----------------------------------------------------------------------------


def test_annotate_upscales_small_frames_and_keeps_the_image_exact():
    frame = moving_square(0)
    layout = caption_layout(64, 64)
    out = annotate(frame, "open the drawer", None)
    assert out.dtype == np.uint8 and out.shape == layout.out_shape
    assert layout.scale == 4 and out.shape[1] == 256
    assert layout.image_box[1] == layout.band_height > 0
    np.testing.assert_array_equal(image_region(out, layout), upscaled(frame, 4))
    # The band holds some bright text pixels.
    assert out[: layout.band_height].max() > 200


def test_annotate_size_is_fixed_and_even_whatever_the_text():
    frame = np.full((37, 301, 3), 90, np.uint8)  # odd sizes, wide enough not to upscale
    shapes = {annotate(frame, t, s).shape for t in ("", "go", LONG_TEXT)
              for s in (None, "success", "failure", "running")}
    assert len(shapes) == 1
    (h, w, c), = shapes
    assert (h % 2, w % 2, c) == (0, 0, 3)
    assert w == 302 and caption_layout(37, 301).scale == 1


def test_annotate_does_not_modify_its_input():
    frame = moving_square(2)
    before = frame.copy()
    annotate(frame, LONG_TEXT, "success")
    np.testing.assert_array_equal(frame, before)


def test_long_text_is_truncated_with_an_ellipsis():
    layout = caption_layout(64, 64)
    font = _font(layout.font_size)
    lines = wrap_text(LONG_TEXT, font, layout.text_width, CAPTION_LINES)
    assert len(lines) == CAPTION_LINES
    assert lines[-1].endswith(ELLIPSIS)
    assert all(font.getlength(line) <= layout.text_width for line in lines)
    short = wrap_text("open the drawer", font, layout.text_width, CAPTION_LINES)
    assert short == ["open the drawer"]


def test_status_label_is_green_only_for_success():
    frame = moving_square(0)
    layout = caption_layout(64, 64)
    success = label_pixels(annotate(frame, "open the drawer", "success"), layout)
    failure = label_pixels(annotate(frame, "open the drawer", "failure"), layout)
    running = label_pixels(annotate(frame, "open the drawer", "running"), layout)
    none = label_pixels(annotate(frame, "open the drawer", None), layout)
    assert green_fraction(success) > 0.5
    assert green_fraction(failure) == 0.0 and green_fraction(running) == 0.0
    r, g, b = failure.T
    assert ((r > 150) & (g < 100)).mean() > 0.5  # red
    # Without a status the corner is plain band background.
    assert len({tuple(p) for p in none}) == 1 and none.max() < 60


def test_annotate_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="uint8"):
        annotate(np.zeros((64, 64), np.uint8), "x", None)
    with pytest.raises(ValueError, match="uint8"):
        annotate(np.zeros((64, 64, 3), np.float32), "x", None)


# --- write_mp4 ----------------------------------------------------------------------------


def test_write_mp4_round_trip(tmp_path):
    inputs = [moving_square(i) for i in range(12)]
    layout = caption_layout(64, 64)
    frames = [annotate(f, "push the square to the corner", "running") for f in inputs]
    path = write_mp4(tmp_path / "nested" / "dir" / "clip.mp4", frames, fps=10)

    assert path == tmp_path / "nested" / "dir" / "clip.mp4"
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[4:8] == b"ftyp"
    # Only the final file remains: the temporary name was renamed away.
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]

    meta, decoded = read_mp4(path)
    assert meta["codec"] == "h264"
    assert meta["pix_fmt"].startswith("yuv420p")
    assert len(decoded) == 12
    assert decoded[0].shape == layout.out_shape
    for src, got in zip(inputs, decoded):
        assert mean_abs_diff(image_region(got, layout), upscaled(src, layout.scale)) < 12
    # Frames come back in order: each is closer to its own input than to the last one.
    last = upscaled(inputs[-1], layout.scale)
    assert mean_abs_diff(image_region(decoded[0], layout), last) > \
        mean_abs_diff(image_region(decoded[0], layout), upscaled(inputs[0], layout.scale))


def test_write_mp4_overwrites_atomically(tmp_path):
    path = tmp_path / "clip.mp4"
    small = [annotate(moving_square(i), "a", None) for i in range(3)]
    write_mp4(path, small, fps=5)
    write_mp4(path, small + small, fps=5)
    assert len(read_mp4(path)[1]) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_write_mp4_errors(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(path, [], fps=10)
    a = np.zeros((64, 64, 3), np.uint8)
    b = np.zeros((64, 66, 3), np.uint8)
    with pytest.raises(ValueError, match="frame 1 has shape"):
        write_mp4(path, [a, b], fps=10)
    with pytest.raises(ValueError, match="even"):
        write_mp4(path, [np.zeros((63, 64, 3), np.uint8)], fps=10)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# --- EpisodeVideo ------------------------------------------------------------------------


def test_episode_video_copies_frames_and_writes_success(tmp_path):
    video = EpisodeVideo("push the square to the corner", fps=10, max_frames=100)
    buffer = np.empty((64, 64, 3), np.uint8)
    inputs = []
    for i in range(12):
        buffer[...] = moving_square(i)  # the caller reuses one buffer
        inputs.append(buffer.copy())
        video.add(buffer)
    path = video.finish(tmp_path / "ep" / "train_0.mp4", success=True)

    layout = caption_layout(64, 64)
    _, decoded = read_mp4(path)
    assert len(decoded) == 12
    for src, got in zip(inputs, decoded):
        assert mean_abs_diff(image_region(got, layout), upscaled(src, layout.scale)) < 12
    assert green_fraction(label_pixels(decoded[0], layout)) > 0.5


def test_episode_video_failure_label(tmp_path):
    video = EpisodeVideo("open the drawer", fps=10, max_frames=100)
    for i in range(4):
        video.add(moving_square(i))
    _, decoded = read_mp4(video.finish(tmp_path / "ep.mp4", success=False))
    assert green_fraction(label_pixels(decoded[0], caption_layout(64, 64))) < 0.05


def test_episode_video_max_frames_keeps_a_uniform_stride():
    video = EpisodeVideo("x", fps=10, max_frames=5)
    for i in range(23):
        video.add(np.full((4, 4, 3), i, np.uint8))
        kept = [int(f[0, 0, 0]) for f in video.frames]
        assert len(kept) <= 5
        assert kept == list(range(0, i + 1, video.stride))
    assert video.stride == 8 and [int(f[0, 0, 0]) for f in video.frames] == [0, 8, 16]


def test_episode_video_errors(tmp_path):
    with pytest.raises(ValueError):
        EpisodeVideo("x", fps=10, max_frames=0)
    video = EpisodeVideo("x", fps=10, max_frames=10)
    with pytest.raises(ValueError, match="no frames"):
        video.finish(tmp_path / "empty.mp4", success=True)
    video.add(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        video.add(np.zeros((8, 10, 3), np.uint8))


# --- VideoSampler ------------------------------------------------------------------------


def test_video_sampler_train():
    sampler = VideoSampler(every_n_episodes=3, per_task=0)
    assert [c for c in range(10) if sampler.want_train(c)] == [0, 3, 6, 9]
    never = VideoSampler(every_n_episodes=0, per_task=2)
    assert not any(never.want_train(c) for c in range(10))


def test_video_sampler_eval():
    sampler = VideoSampler(every_n_episodes=0, per_task=2)
    assert [(t, k) for t in range(3) for k in range(4) if sampler.want_eval(t, k)] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert not VideoSampler(5, per_task=0).want_eval(0, 0)


def test_video_sampler_rejects_negative():
    with pytest.raises(ValueError):
        VideoSampler(every_n_episodes=-1, per_task=1)
    with pytest.raises(ValueError):
        VideoSampler(every_n_episodes=1, per_task=-1)
