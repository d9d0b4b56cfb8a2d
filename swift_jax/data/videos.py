"""Videos for Qwen2-VL / Qwen2.5-VL rows, in numpy (transformers' video processors need torch).

A video is a list of frame images (paths, base64, PIL) or a video file decoded with PyAV (`pip install av`;
the `video` extra). Frames are sized as ms-swift sizes them (qwen-vl-utils' fetch_video: see video_sizing.py,
PIL bicubic resizes), then rescaled, normalised, padded to a multiple of `temporal_patch_size` by repeating
the last frame, and cut into `[patches, C * T * P * P]` in transformers' Qwen2VLVideoProcessor order (which
ms-swift runs with `do_resize=False`). Files are sampled at FPS frames a second (`smart_nframes`, frames
evenly spaced over the whole file). `second_per_grid_ts` (Qwen2.5-VL's temporal M-RoPE spacing) is
temporal_patch / fps; a frame list counts as FPS frames a second, as in ms-swift.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from swift_jax.data.errors import DataError
from swift_jax.data.images import read_image
from swift_jax.data.video_sizing import VideoSizing, frame_size, padded_frame_count, smart_nframes, video_size


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """The video processor's settings (transformers' `Qwen2VLVideoProcessor` names) and ms-swift's sizing."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    sizing: VideoSizing = VideoSizing()

    @classmethod
    def from_pretrained(cls, model_dir: str, image_processor) -> "VideoSettings":
        """`video_preprocessor_config.json` of the folder when present, else transformers' defaults; patch
        sizes and normalisation from the image processor; the sizing from the environment, as ms-swift's."""
        config = {}
        path = os.path.join(model_dir, "video_preprocessor_config.json")
        if os.path.exists(path):
            with open(path) as f:
                config = json.load(f)
        p = image_processor
        patch, merge = config.get("patch_size", p.patch_size), config.get("merge_size", p.merge_size)
        return cls(
            patch_size=patch,
            temporal_patch_size=config.get("temporal_patch_size", p.temporal_patch_size),
            merge_size=merge,
            image_mean=tuple(config.get("image_mean", p.image_mean)),
            image_std=tuple(config.get("image_std", p.image_std)),
            sizing=VideoSizing.from_env(patch * merge, merge),
        )


def _resized(frames: list[Image.Image], size: tuple[int, int]) -> list[Image.Image]:
    """Frames at `size` (height, width): PIL bicubic where the size differs."""
    h, w = size
    return [f if f.size == (w, h) else f.resize((w, h), Image.BICUBIC) for f in frames]


def read_video(source, sizing: VideoSizing | None = None, *, where: str = "video") -> tuple[list[Image.Image], float]:
    """`(frames, fps)` sized as ms-swift sizes them: a list of frame images (each resized as an image, padded
    to FRAME_FACTOR frames, fps = FPS) or a video file sampled at FPS, then fitted to the video pixel limits."""
    s = sizing or VideoSizing.from_env()
    if isinstance(source, list):
        if not source:
            raise DataError(f"{where}: an empty list of frames")
        frames = [read_image(f, where=f"{where}[{i}]").convert("RGB") for i, f in enumerate(source)]
        frames = [_resized([f], frame_size(f.height, f.width, s))[0] for f in frames]
        if len({f.size for f in frames}) > 1:
            raise DataError(f"{where}: frames of one video differ in size after resizing: {sorted({f.size for f in frames})}")
        frames += frames[-1:] * (padded_frame_count(len(frames), s) - len(frames))
        fps = s.fps
    else:
        frames, fps = _decode_file(source, s, where)
    return _resized(frames, video_size(len(frames), frames[0].height, frames[0].width, s)), fps


def _decode_file(source, s: VideoSizing, where: str) -> tuple[list[Image.Image], float]:
    """A local video file's frames sampled at FPS (smart_nframes, evenly spaced) and the sampled fps."""
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
            rate = float(stream.average_rate or s.fps)
    except (av.error.FFmpegError, IndexError) as err:
        raise DataError(f"{where}: cannot decode the video ({err})") from None
    if not frames:
        raise DataError(f"{where}: the video has no frames")
    n = smart_nframes(len(frames), rate, s)
    picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i].convert("RGB") for i in picks], n / len(frames) * rate


def preprocess_video(settings: VideoSettings, frames: list[Image.Image]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """`(patches [t*h*w, C*T*P*P], (t, h, w))` of one video's frames, sized already (read_video), as
    transformers' video processor with `do_resize=False`."""
    s = settings
    width, height = frames[0].size
    unit = s.patch_size * s.merge_size
    if height % unit or width % unit:
        raise DataError(f"video frames of {height}x{width} are not multiples of {unit} px (size them with read_video)")
    mean, std = np.asarray(s.image_mean, np.float32), np.asarray(s.image_std, np.float32)
    stack = []
    for frame in frames:
        if frame.size != (width, height):
            raise DataError(f"frames of one video differ in size: {frame.size} and {(width, height)}")
        stack.append((np.asarray(frame, np.float32) * s.rescale_factor - mean) / std)  # [h, w, C]
    video = np.stack(stack).transpose(0, 3, 1, 2)  # [frames, C, h, w]
    if pad := -len(video) % s.temporal_patch_size:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, gh, gw, m, p = len(video) // s.temporal_patch_size, height // s.patch_size, width // s.patch_size, s.merge_size, s.patch_size
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
