"""Host-side (numpy) layout of Qwen2-VL vision inputs: what transformers computes from `image_grid_thw`
with Python loops, computed once per batch on the host so that the jitted model sees only arrays.

- `patch_layout`: per patch, its (row, column) for the vision tower's 2-D rotary, the frame it belongs
  to (attention never crosses frames) and, for Qwen2.5-VL, its attention window; `window_order` puts
  each window's patches next to each other.
- `mrope_positions`: the language model's `[3, batch, seq]` M-RoPE positions (transformers'
  `get_rope_index`), per packed segment.

Patches arrive in the image processor's order: frame by frame, and inside a frame merge unit by merge
unit (`spatial_merge_size`^2 neighbouring patches in a row), units in row-major order.
"""

from __future__ import annotations

import numpy as np

from ..config import Qwen2VLVisionConfig

TEXT, IMAGE, VIDEO = 0, 1, 2  # transformers' mm_token_type_ids


def _grids(grid_thw) -> np.ndarray:
    """`grid_thw` as an int64 `[n, 3]` array (an empty one for None)."""
    return np.zeros((0, 3), np.int64) if grid_thw is None else np.asarray(grid_thw, np.int64).reshape(-1, 3)


def patch_layout(grid_thw, cfg: Qwen2VLVisionConfig, num_patches: int | None = None) -> dict[str, np.ndarray]:
    """Per-patch layout arrays for the patches of `grid_thw` `[n, 3]` (t, h, w per image or video).

    Returns int32 arrays: `positions` `[N, 2]` (row, column in patches), `frame_ids` `[N]` (1, 2, ...:
    one id per frame of every image/video; 0 = padding) and `window_ids` `[N]` (Qwen2.5-VL's attention
    windows of `window_size` pixels, numbered like frames; equal to `frame_ids` without windows).
    `num_patches` pads the arrays to a fixed length (padding patches get id 0 and attend nowhere).
    """
    m = cfg.spatial_merge_size
    window = cfg.window_size // m // cfg.patch_size if cfg.window_size else 0  # window side in merge units
    positions, frames, windows = [], [], []
    frame_id = window_id = 0
    for t, h, w in _grids(grid_thw).tolist():
        if h % m or w % m:
            raise ValueError(f"grid (t={t}, h={h}, w={w}) is not divisible by spatial_merge_size={m}")
        # unit row / column and the row / column inside the unit, in the processor's patch order
        unit_h, unit_w, in_h, in_w = np.meshgrid(
            np.arange(h // m), np.arange(w // m), np.arange(m), np.arange(m), indexing="ij"
        )
        rows, cols = (unit_h * m + in_h).ravel(), (unit_w * m + in_w).ravel()  # [h * w]
        if window:
            windows_w = -(-(w // m) // window)
            local = ((unit_h // window) * windows_w + unit_w // window).ravel()
            per_frame = -(-(h // m) // window) * windows_w
        else:
            local, per_frame = np.zeros(h * w, np.int64), 1
        for _ in range(t):
            positions.append(np.stack([rows, cols], axis=-1))
            frames.append(np.full(h * w, frame_id + 1))
            windows.append(local + window_id + 1)
            frame_id += 1
            window_id += per_frame
    total = sum(len(f) for f in frames)
    size = total if num_patches is None else num_patches
    if size < total or size % cfg.merge_unit:
        raise ValueError(f"num_patches={size} must be >= {total} patches and a multiple of {cfg.merge_unit}")
    out = {
        "positions": np.zeros((size, 2), np.int32),
        "frame_ids": np.zeros((size,), np.int32),
        "window_ids": np.zeros((size,), np.int32),
    }
    if total:
        out["positions"][:total] = np.concatenate(positions)
        out["frame_ids"][:total] = np.concatenate(frames)
        out["window_ids"][:total] = np.concatenate(windows)
    return out


def window_order(window_ids: np.ndarray, merge_unit: int) -> np.ndarray:
    """The merge units `[units]` sorted by window, reading order kept inside each window (transformers'
    `get_vision_window_index`; padding, id 0, stays last): each window becomes one contiguous run."""
    unit_windows = np.asarray(window_ids)[::merge_unit]
    return np.argsort(np.where(unit_windows > 0, unit_windows, np.iinfo(np.int32).max), kind="stable")


def token_types(input_ids: np.ndarray, cfg: Qwen2VLVisionConfig) -> np.ndarray:
    """transformers' `mm_token_type_ids`: 1 on image pad tokens, 2 on video pad tokens, 0 elsewhere."""
    ids = np.asarray(input_ids)
    return np.where(ids == cfg.image_token_id, IMAGE, np.where(ids == cfg.video_token_id, VIDEO, TEXT)).astype(np.int32)


def _vision_positions(start: int, grid: np.ndarray, m: int, time_interval: float) -> np.ndarray:
    """`[3, t * h/m * w/m]` positions of one image/video's tokens starting at `start`."""
    t, h, w = int(grid[0]), int(grid[1]) // m, int(grid[2]) // m
    tt, hh, ww = np.meshgrid((np.arange(t) * time_interval).astype(np.int64), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + start


def mrope_positions(
    input_ids: np.ndarray,
    cfg: Qwen2VLVisionConfig,
    image_grid_thw=None,
    video_grid_thw=None,
    *,
    segment_ids: np.ndarray | None = None,
    second_per_grid_ts=None,
) -> np.ndarray:
    """M-RoPE positions `[3, batch, seq]` int32 for token rows `input_ids` `[batch, seq]`.

    Text tokens count up by one on all three rows; an image's (video's) tokens take (t, row, column)
    offsets from the position where it starts, and the text after it resumes at that start plus
    `max(h, w) / spatial_merge_size` (transformers' `get_rope_index`). Grids are consumed in order of
    appearance, images and videos separately. `segment_ids` `[batch, seq]` (0 = padding) restarts the
    count in each packed segment; padding gets position 0. `second_per_grid_ts` (Qwen2.5-VL videos)
    spaces the temporal positions by `tokens_per_second * seconds` per grid step.
    """
    ids = np.asarray(input_ids)
    segment_ids = np.ones_like(ids) if segment_ids is None else np.asarray(segment_ids)
    types = token_types(ids, cfg)
    grids = {IMAGE: iter(_grids(image_grid_thw)), VIDEO: iter(_grids(video_grid_thw))}
    seconds = iter(
        np.ones(len(_grids(video_grid_thw))) if second_per_grid_ts is None else np.asarray(second_per_grid_ts)
    )
    m = cfg.spatial_merge_size
    out = np.zeros((3, *ids.shape), np.int64)
    for b in range(ids.shape[0]):
        for seg in np.unique(segment_ids[b][segment_ids[b] > 0]):
            where = np.flatnonzero(segment_ids[b] == seg)
            seg_types = types[b, where]
            pieces, pos, i = [], 0, 0
            while i < len(where):
                kind = seg_types[i]
                if kind == TEXT:
                    end = i + 1
                    while end < len(where) and seg_types[end] == TEXT:
                        end += 1
                    pieces.append(np.broadcast_to(np.arange(end - i) + pos, (3, end - i)))
                    pos, i = pos + end - i, end
                    continue
                grid = next(grids[kind], None)
                if grid is None:
                    raise ValueError(f"row {b}: more {'image' if kind == IMAGE else 'video'} tokens than grids")
                interval = cfg.tokens_per_second * next(seconds) if kind == VIDEO and cfg.kind == "qwen2_5_vl" else 1
                block = _vision_positions(pos, grid, m, interval)
                n = block.shape[1]
                if i + n > len(where) or (seg_types[i : i + n] != kind).any():
                    raise ValueError(
                        f"row {b}: a grid of {n} tokens does not match the placeholder tokens at {where[i]}"
                    )
                pieces.append(block)
                pos, i = pos + max(int(grid[1]), int(grid[2])) // m, i + n
            out[:, b, where] = np.concatenate(pieces, axis=1)
    return out.astype(np.int32)
