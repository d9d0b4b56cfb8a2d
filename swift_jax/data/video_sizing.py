"""qwen-vl-utils' video sizing, what ms-swift's Qwen2-VL / Qwen2.5-VL templates call (`fetch_video`), as pure
functions of sizes.

A frame list: each frame is resized as an image (`frame_size`; qwen-vl-utils passes fetch_video's factor as
fetch_image's patch size, so frames land on multiples of factor x merge = 56 px for real checkpoints, inside
IMAGE_MIN/MAX_TOKEN_NUM of that factor), the count is padded to FRAME_FACTOR by repeating the last frame, then
the whole video is fitted inside VIDEO_MIN/MAX_TOKEN_NUM (`video_size`). A video file: `smart_nframes` frames
sampled at FPS, then `video_size`. The processor then runs with `do_resize=False`.

The constants carry qwen-vl-utils' names and read the environment variables ms-swift reads (its
`compat_qwen_vl_utils` / `patch_qwen_vl_utils`): `MAX_PIXELS` / `MIN_PIXELS` / `VIDEO_MAX_PIXELS` /
`VIDEO_MIN_PIXELS` (pixels, turned into token numbers) unless the token numbers themselves are set, and
`IMAGE_MAX_TOKEN_NUM`, `IMAGE_MIN_TOKEN_NUM`, `VIDEO_MAX_TOKEN_NUM`, `VIDEO_MIN_TOKEN_NUM`, `FPS`,
`FRAME_FACTOR`, `FPS_MIN_FRAMES`, `FPS_MAX_FRAMES`, `MAX_RATIO`, `MODEL_SEQ_LEN`. The factor is the
checkpoint's patch x merge size (28 for every real Qwen2-VL / Qwen2.5-VL, ms-swift's fixed 14 x 2).
"""

from __future__ import annotations

import dataclasses
import math
import os

from swift_jax.data.errors import DataError

DEFAULTS = {  # qwen-vl-utils 0.0.14's module constants
    "IMAGE_MIN_TOKEN_NUM": 4, "IMAGE_MAX_TOKEN_NUM": 16384, "VIDEO_MIN_TOKEN_NUM": 128, "VIDEO_MAX_TOKEN_NUM": 768,
    "FPS": 2.0, "FRAME_FACTOR": 2, "FPS_MIN_FRAMES": 4, "FPS_MAX_FRAMES": 768, "MAX_RATIO": 200, "MODEL_SEQ_LEN": 128000,
}
PIXEL_VARIABLES = {"MAX_PIXELS": "IMAGE_MAX_TOKEN_NUM", "MIN_PIXELS": "IMAGE_MIN_TOKEN_NUM",
                   "VIDEO_MAX_PIXELS": "VIDEO_MAX_TOKEN_NUM", "VIDEO_MIN_PIXELS": "VIDEO_MIN_TOKEN_NUM"}


@dataclasses.dataclass(frozen=True)
class VideoSizing:
    """qwen-vl-utils' sizing constants (its names, lower-cased) and the factor, patch x merge size."""

    factor: int = 28
    merge_size: int = 2
    image_min_token_num: int = DEFAULTS["IMAGE_MIN_TOKEN_NUM"]
    image_max_token_num: int = DEFAULTS["IMAGE_MAX_TOKEN_NUM"]
    video_min_token_num: int = DEFAULTS["VIDEO_MIN_TOKEN_NUM"]
    video_max_token_num: int = DEFAULTS["VIDEO_MAX_TOKEN_NUM"]
    fps: float = DEFAULTS["FPS"]
    frame_factor: int = DEFAULTS["FRAME_FACTOR"]
    fps_min_frames: int = DEFAULTS["FPS_MIN_FRAMES"]
    fps_max_frames: int = DEFAULTS["FPS_MAX_FRAMES"]
    max_ratio: int = DEFAULTS["MAX_RATIO"]
    model_seq_len: int = DEFAULTS["MODEL_SEQ_LEN"]

    @classmethod
    def from_env(cls, factor: int = 28, merge_size: int = 2, env=None) -> "VideoSizing":
        """The constants as ms-swift sets them from the environment (see the module docstring)."""
        env = os.environ if env is None else env
        values = {}
        for name, default in DEFAULTS.items():
            raw = env.get(name)
            pixel_name = next((p for p, t in PIXEL_VARIABLES.items() if t == name), None)
            if raw is None and pixel_name and env.get(pixel_name):
                raw = int(env[pixel_name]) // factor ** 2
            try:
                values[name.lower()] = default if raw is None else int(float(raw)) if name == "MODEL_SEQ_LEN" else type(default)(raw)
            except ValueError:
                raise DataError(f"environment variable {name}={raw!r} is not a {type(default).__name__}") from None
        return cls(factor=factor, merge_size=merge_size, **values)


def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float,
                 max_ratio: int = DEFAULTS["MAX_RATIO"]) -> tuple[int, int]:
    """qwen-vl-utils' resize target: sides multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > max_ratio:
        raise DataError(f"aspect ratio of a {height}x{width} frame is over {max_ratio}")
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def frame_size(height: int, width: int, s: VideoSizing) -> tuple[int, int]:
    """Size of one frame of a frame list (fetch_image at factor x merge, inside the image token numbers)."""
    f = s.factor * s.merge_size
    return smart_resize(height, width, f, s.image_min_token_num * f * f, s.image_max_token_num * f * f, s.max_ratio)


def padded_frame_count(count: int, s: VideoSizing) -> int:
    """A frame list's length padded up to a multiple of FRAME_FACTOR."""
    return math.ceil(count / s.frame_factor) * s.frame_factor


def video_size(nframes: int, height: int, width: int, s: VideoSizing) -> tuple[int, int]:
    """Size of every frame of a video of `nframes` frames (fetch_video's video min / max / total pixels)."""
    f2 = s.factor * s.factor
    min_pixels = s.video_min_token_num * f2
    total_pixels = s.model_seq_len * f2 * 0.9
    max_pixels = max(min(s.video_max_token_num * f2, total_pixels / nframes * s.frame_factor), int(min_pixels * 1.05))
    return smart_resize(height, width, s.factor, min_pixels, max_pixels, s.max_ratio)


def smart_nframes(total_frames: int, video_fps: float, s: VideoSizing) -> int:
    """Frames sampled from a video file of `total_frames` at `video_fps`: FPS frames a second, within
    FPS_MIN_FRAMES / FPS_MAX_FRAMES, a multiple of FRAME_FACTOR."""
    ff = s.frame_factor
    min_frames = math.ceil(s.fps_min_frames / ff) * ff
    max_frames = math.floor(min(s.fps_max_frames, total_frames) / ff) * ff
    n = min(max(total_frames / video_fps * s.fps, min_frames), max_frames, total_frames)
    n = math.floor(n / ff) * ff
    if not ff <= n <= total_frames:
        raise DataError(f"a video of {total_frames} frames is too short: {ff} frames at least")
    return n
