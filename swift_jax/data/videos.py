"""Videos for Qwen2-VL / Qwen2.5-VL rows, in numpy (transformers' video processors need torch).

A video is a list of frame images (paths, base64, PIL) or a video file decoded with PyAV (`pip install av`;
the `video` extra). Files are sampled at `FPS` frames per second (qwen-vl-utils' default, what ms-swift
calls), between `MIN_FRAMES` and `MAX_FRAMES`, a multiple of the temporal patch; frame lists are used whole.
Each frame is resized as transformers' `Qwen2VLVideoProcessor` does (`smart_resize` to a multiple of
patch x merge inside the video's min/max pixels), rescaled, normalised, padded to a multiple of
`temporal_patch_size` by repeating the last frame, and cut into `[patches, C * T * P * P]` in the
processor's order. `second_per_grid_ts` (Qwen2.5-VL's temporal M-RoPE spacing) is temporal_patch / fps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image

from swift_jax.data.errors import DataError
from swift_jax.data.images import read_image

FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 768
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28  # transformers' Qwen2VLVideoProcessor


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """The video processor's settings (transformers' `Qwen2VLVideoProcessor` names)."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float = 1 / 255

    @classmethod
    def from_pretrained(cls, model_dir: str, image_processor) -> "VideoSettings":
        """`video_preprocessor_config.json` of the folder when present, else transformers' defaults; patch
        sizes and normalisation from the image processor."""
        config = {}
        path = os.path.join(model_dir, "video_preprocessor_config.json")
        if os.path.exists(path):
            with open(path) as f:
                config = json.load(f)
        size = config.get("size") or {}
        p = image_processor
        return cls(
            patch_size=config.get("patch_size", p.patch_size),
            temporal_patch_size=config.get("temporal_patch_size", p.temporal_patch_size),
            merge_size=config.get("merge_size", p.merge_size),
            min_pixels=config.get("min_pixels") or size.get("shortest_edge", VIDEO_MIN_PIXELS),
            max_pixels=config.get("max_pixels") or size.get("longest_edge", VIDEO_MAX_PIXELS),
            image_mean=tuple(config.get("image_mean", p.image_mean)),
            image_std=tuple(config.get("image_std", p.image_std)),
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize target: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise DataError(f"aspect ratio of a {height}x{width} frame is over 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def read_video(source, *, where: str = "video") -> tuple[list[Image.Image], float]:
    """`(frames, fps)`: a list of frame images as given (fps = FPS), or a video file sampled at FPS."""
    if isinstance(source, list):
        if not source:
            raise DataError(f"{where}: an empty list of frames")
        return [read_image(f, where=f"{where}[{i}]") for i, f in enumerate(source)], FPS
    if not isinstance(source, str) or not os.path.exists(source):
        raise DataError(f"{where}: expected a list of frames or a local video file, got {str(source)[:80]!r}")
    try:
        import av
    except ImportError:
        raise DataError(f"{where}: reading video files needs PyAV: pip install av (or pass a list of frames)") from None
    try:
        with av.open(source) as container:
            stream = container.streams.video[0]
            frames = [frame.to_image() for frame in container.decode(stream)]
            rate = float(stream.average_rate or FPS)
    except (av.error.FFmpegError, IndexError) as err:
        raise DataError(f"{where}: cannot decode the video ({err})") from None
    if not frames:
        raise DataError(f"{where}: the video has no frames")
    n = round(len(frames) / rate * FPS / 2) * 2
    n = min(max(n, MIN_FRAMES), MAX_FRAMES, len(frames) // 2 * 2 or 1)
    picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i].convert("RGB") for i in picks], n / len(frames) * rate


def preprocess_video(settings: VideoSettings, frames: list[Image.Image]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """`(patches [t*h*w, C*T*P*P], (t, h, w))` of one video's frames (see the module docstring)."""
    s = settings
    height, width = frames[0].height, frames[0].width
    h, w = smart_resize(height, width, s.patch_size * s.merge_size, s.min_pixels, s.max_pixels)
    mean, std = np.asarray(s.image_mean, np.float32), np.asarray(s.image_std, np.float32)
    stack = []
    for frame in frames:
        if frame.size != (width, height):
            raise DataError(f"frames of one video differ in size: {frame.size} and {(width, height)}")
        resized = frame if (h, w) == (height, width) else frame.resize((w, h), Image.BICUBIC)
        stack.append((np.asarray(resized, np.float32) * s.rescale_factor - mean) / std)  # [h, w, C]
    video = np.stack(stack).transpose(0, 3, 1, 2)  # [frames, C, h, w]
    if pad := -len(video) % s.temporal_patch_size:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, gh, gw, m, p = len(video) // s.temporal_patch_size, h // s.patch_size, w // s.patch_size, s.merge_size, s.patch_size
    c = video.shape[1]
    patches = video.reshape(t, s.temporal_patch_size, c, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, units(h, w), in-unit(h, w), C, T, P, P
    return patches.reshape(t * gh * gw, c * s.temporal_patch_size * p * p), (t, gh, gw)


def preprocess_videos(settings: VideoSettings, videos: list[tuple[list[Image.Image], float]]) -> dict[str, np.ndarray]:
    """`pixel_values_videos`, `video_grid_thw` `[videos, 3]` and `second_per_grid_ts` `[videos]`."""
    patches, grids, seconds = [], [], []
    for frames, fps in videos:
        p, g = preprocess_video(settings, frames)
        patches.append(p)
        grids.append(g)
        seconds.append(settings.temporal_patch_size / fps)
    return {
        "pixel_values_videos": np.concatenate(patches).astype(np.float32),
        "video_grid_thw": np.asarray(grids, np.int64),
        "second_per_grid_ts": np.asarray(seconds, np.float32),
    }
