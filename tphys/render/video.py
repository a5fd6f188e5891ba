"""Writing frames to disk: animated GIF (Pillow, always available), MP4 (needs imageio-ffmpeg), PNGs.

GIFs use one 256-colour palette for all frames, taken from a few sample frames: rendered plots
have few colours, and quantising each frame on its own costs ~30 ms a frame instead of ~2 ms.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".gif", ".mp4")


def mp4_available() -> bool:
    """True when imageio can encode MP4 here (the ``imageio-ffmpeg`` package is installed)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def gif_frame_duration_ms(fps: float) -> int:
    """Per-frame GIF delay (ms) closest to ``fps``.

    GIF stores delays in units of 10 ms and browsers slow delays under 20 ms down to about
    100 ms, so the delay is rounded to 10 ms and kept >= 20 ms (at most 50 frames per second).
    """
    return max(20, 10 * round(100.0 / fps))


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Write RGB frames [H, W, 3] uint8 (all of one size) as a looping GIF or an MP4, by suffix.

    Args:
        frames: the frames, in order.
        path: destination ending in .gif or .mp4; its folder is created.
        fps: frames per second of playback (a GIF rounds it, see ``gif_frame_duration_ms``).

    Returns:
        The path written.

    Raises:
        ValueError: unknown suffix, no frames, frames of mixed or wrong shape, fps not > 0.
        RuntimeError: .mp4 requested but imageio-ffmpeg is not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported video format {path.suffix!r} for {path}; use one of {', '.join(VIDEO_SUFFIXES)}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    stack = _stack(frames)
    if suffix == ".mp4" and not mp4_available():
        raise RuntimeError(
            "writing .mp4 needs the imageio-ffmpeg package, which is not installed: `pip install imageio-ffmpeg`, or write a .gif instead"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        _write_gif(stack, path, gif_frame_duration_ms(fps))
    else:
        iio.imwrite(path, stack, extension=".mp4", plugin="FFMPEG", fps=fps, macro_block_size=1)
    return path


def save_frames_png(frames: Sequence[np.ndarray], directory: str | Path, prefix: str = "frame") -> list[Path]:
    """Write each RGB frame [H, W, 3] uint8 as ``directory/{prefix}_00000.png``, ``..._00001.png``, ...

    The folder is created if needed; returns the paths in frame order.
    """
    stack = _stack(frames)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(stack) - 1)))
    paths = []
    for index, frame in enumerate(stack):
        path = directory / f"{prefix}_{index:0{digits}d}.png"
        iio.imwrite(path, frame, extension=".png")
        paths.append(path)
    return paths


def _write_gif(stack: np.ndarray, path: Path, duration_ms: int, palette_samples: int = 6) -> None:
    """Looping GIF of ``stack`` [T, H, W, 3] uint8 quantised to one palette, no dithering.

    Colours are off by a few levels at most (Pillow's palette matching is approximate: white may
    come back as (253, 252, 252)). Pillow merges identical consecutive frames into one (adding their delays).
    """
    samples = stack[np.linspace(0, len(stack) - 1, min(palette_samples, len(stack))).round().astype(int)]
    palette = Image.fromarray(np.concatenate(list(samples), 0)).quantize(
        colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE
    )
    images = [Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE) for frame in stack]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False)


def _stack(frames: Sequence[np.ndarray]) -> np.ndarray:
    """[T, H, W, 3] uint8 stack of the frames; ValueError when empty or shapes disagree."""
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("no frames to write")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"frames must be RGB arrays [H, W, 3], got shape {shape}")
    for index, frame in enumerate(frames):
        if frame.shape != shape:
            raise ValueError(f"frame {index} has shape {frame.shape}, frame 0 has {shape}; all frames must have one size")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {index} has dtype {frame.dtype}, expected uint8")
    return np.stack(frames)
