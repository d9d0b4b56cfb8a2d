"""Qwen2-VL vision inputs laid out per batch row, for training batches (padded or packed).

A training batch is `[rows, ...]` arrays sharded over the batch axes, so each row carries its own patches:

    pixel_values  [rows, S, Q, patch_dim]  the row's patches, one frame per slot (of its samples' images and
                                           videos, in order of appearance, in window order), zero-padded
    patch_pos     [rows, S, Q, 2]        row, column of each patch in its frame (2-D rotary)
    frame_ids     [rows, S, Q]           attention segment of whole-frame blocks, unique in the row (0 = pad)
    window_ids    [rows, S, Q]           attention segment of windowed blocks (Qwen2.5-VL)
    unit_restore  [rows, S * Q / unit]   merged features back in order of appearance
    mrope         [rows, seq, 3]         M-RoPE positions, restarting in each packed segment

`sample_layout` computes one sample's arrays on the host (numpy, flat `[patches]`); grain's packer
concatenates samples; `frame_slots` moves each frame to a slot of its own (static Q and S per step), so the
vision tower's attention costs the sum of the frames' squares, not the square of a packed row's patches; and
`row_embeds` runs the tower over the slots and scatters the k-th image/video pad token of a row to the row's
k-th merged feature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..config import Qwen2VLVisionConfig
from . import grid
from .common import run_layer
from .qwen2_vl import vision_rotary

VISION_KEYS = ("pixel_values", "patch_pos", "frame_ids", "window_ids", "unit_restore")
"""Per-row vision arrays of a training batch (besides `mrope`)."""


def appearance_order(input_ids: np.ndarray, cfg: Qwen2VLVisionConfig) -> list[tuple[int, int]]:
    """`(kind, index)` of each image (kind 1) / video (kind 2) in the order their pad runs appear."""
    types = grid.token_types(np.asarray(input_ids), cfg)
    starts = np.flatnonzero((types > 0) & (np.concatenate([[0], types[:-1]]) != types))
    seen = {grid.IMAGE: 0, grid.VIDEO: 0}
    order = []
    for s in starts:
        kind = int(types[s])
        order.append((kind, seen[kind]))
        seen[kind] += 1
    return order


def sample_layout(
    cfg: Qwen2VLVisionConfig,
    input_ids: np.ndarray,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
) -> dict[str, np.ndarray]:
    """One sample's vision arrays (see the module docstring; ids start at 1, restore indices at 0) and its
    M-RoPE positions `mrope` `[seq, 3]`. Runs of adjacent pads of one kind must be one image / video each
    (the template puts vision start/end tokens around them)."""
    grids = {grid.IMAGE: grid._grids(image_grid_thw), grid.VIDEO: grid._grids(video_grid_thw)}
    pixels = {
        grid.IMAGE: np.zeros((0, cfg.patch_dim), np.float32) if pixel_values is None else np.asarray(pixel_values),
        grid.VIDEO: np.zeros((0, cfg.patch_dim), np.float32) if pixel_values_videos is None else np.asarray(pixel_values_videos),
    }
    pieces = {k: np.split(pixels[k], np.cumsum(np.prod(grids[k], axis=-1))[:-1]) if len(grids[k]) else [] for k in grids}
    order = appearance_order(input_ids, cfg)
    if len(order) != len(grids[grid.IMAGE]) + len(grids[grid.VIDEO]):
        raise ValueError(f"{len(order)} runs of vision pad tokens for {len(grids[1])} images and {len(grids[2])} videos")
    ordered_grids = np.stack([grids[k][i] for k, i in order]) if order else np.zeros((0, 3), np.int64)
    layout = grid.patch_layout(ordered_grids, cfg)
    units = grid.window_order(layout["window_ids"], cfg.merge_unit)  # [units]
    patch_order = (units[:, None] * cfg.merge_unit + np.arange(cfg.merge_unit)).reshape(-1)  # [patches]
    flat = np.concatenate([pieces[k][i] for k, i in order]) if order else pixels[grid.IMAGE]
    mrope = grid.mrope_positions(
        np.asarray(input_ids)[None], cfg, image_grid_thw, video_grid_thw, second_per_grid_ts=second_per_grid_ts
    )[:, 0].T  # [seq, 3]
    return {
        "pixel_values": flat.astype(np.float32)[patch_order],
        "patch_pos": layout["positions"][patch_order],
        "frame_ids": layout["frame_ids"][patch_order],
        "window_ids": layout["window_ids"][patch_order],
        "unit_restore": np.argsort(units).astype(np.int32),
        "mrope": np.ascontiguousarray(mrope, np.int32),
    }


def pad_layout(layout: dict[str, np.ndarray], num_patches: int, merge_unit: int) -> dict[str, np.ndarray]:
    """A sample's vision arrays zero-padded to `num_patches` patches (padding restores to itself)."""
    out = {}
    for key in ("pixel_values", "patch_pos", "frame_ids", "window_ids"):
        value = layout[key]
        out[key] = np.zeros((num_patches, *value.shape[1:]), value.dtype)
        out[key][: len(value)] = value
    units = num_patches // merge_unit
    out["unit_restore"] = np.arange(units, dtype=np.int32)
    out["unit_restore"][: len(layout["unit_restore"])] = layout["unit_restore"]
    return out


def frame_slots(rows: list[dict[str, np.ndarray]], merge_unit: int, minimum: int = 16) -> list[dict[str, np.ndarray]]:
    """Rows whose patch arrays are flat `[P]` (real patches first, frames contiguous) with each frame moved to a
    slot of its own: `[S, Q]` arrays (Q: a power of two >= the largest frame of the rows, S: the most frames a
    row holds, a power of two), `unit_restore` re-pointed at the slots. The vision tower then attends per slot,
    so a packed row of many images costs sum(Q^2), not (sum of patches)^2."""
    runs = []
    for row in rows:
        frames = row["frame_ids"][row["frame_ids"] > 0]
        starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]]) if len(frames) else np.zeros(0, int)
        runs.append(list(zip(starts.tolist(), np.r_[starts[1:], len(frames)].astype(int).tolist())))
    longest = max((e - s for r in runs for s, e in r), default=0)
    q = max(minimum, merge_unit, 1 << max(0, longest - 1).bit_length())
    slots = 1 << max(0, max(len(r) for r in runs) - 1).bit_length()
    out = []
    for row, row_runs in zip(rows, runs):
        new = dict(row)
        for key in ("pixel_values", "patch_pos", "frame_ids", "window_ids"):
            value = row[key]
            new[key] = np.zeros((slots, q, *value.shape[1:]), value.dtype)
            for j, (s, e) in enumerate(row_runs):
                new[key][j, : e - s] = value[s:e]
        units_per_slot = q // merge_unit
        new_unit = np.zeros(len(row["unit_restore"]), np.int64)
        for j, (s, e) in enumerate(row_runs):
            new_unit[s // merge_unit : e // merge_unit] = j * units_per_slot + np.arange((e - s) // merge_unit)
        real = (row_runs[-1][1] if row_runs else 0) // merge_unit
        restore = np.arange(slots * units_per_slot, dtype=np.int32)
        restore[:real] = new_unit[row["unit_restore"][:real]]
        new["unit_restore"] = restore
        out.append(new)
    return out


def left_padded_rows(layouts: list[dict], batch: int, length: int, merge_unit: int) -> dict[str, np.ndarray]:
    """Generation prompts' vision arrays: each prompt's `sample_layout` as one row, its M-RoPE `positions`
    `[batch, length, 3]` left-padded like the prompt tokens, its patches padded to one power-of-two bucket;
    filler rows beyond the prompts are empty."""
    most = max(len(layout["frame_ids"]) for layout in layouts)
    empty = {k: v[:0] for k, v in layouts[0].items()}
    rows = []
    for layout in list(layouts) + [empty] * (batch - len(layouts)):
        row = pad_layout(layout, max(most, merge_unit), merge_unit)
        row["positions"] = np.zeros((length, 3), np.int32)
        row["positions"][length - len(layout["mrope"]) :] = layout["mrope"]
        rows.append(row)
    rows = frame_slots(rows, merge_unit)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def packed_ids(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vision arrays of a packed row (grain's packer output, `*_segment_ids` / `*_positions` per feature) made
    row-global: frame / window ids unique per segment, restore indices offset to each segment's first unit."""
    seg = row["frame_ids_segment_ids"].astype(np.int32)  # [P]
    out = {k: row[k] for k in ("pixel_values", "patch_pos")}
    for key in ("frame_ids", "window_ids"):
        local = row[key].astype(np.int32)
        out[key] = np.where(local > 0, (seg << 16) + local, 0).astype(np.int32)
    units = len(row["unit_restore"])
    start = np.arange(units) - row["unit_restore_positions"]
    real = row["unit_restore_segment_ids"] > 0
    out["unit_restore"] = np.where(real, row["unit_restore"] + start, np.arange(units)).astype(np.int32)
    return out


def row_features(visual, batch: dict[str, jax.Array]) -> jax.Array:
    """Merged features `[rows, units, embed]` of each row's patches, in order of appearance: the vision
    tower over frame slots (`frame_slots`: `[rows, slots, Q]` arrays; attention stays inside a slot's frame
    or window)."""
    cfg = visual.cfg
    rows, slots, q, _ = batch["pixel_values"].shape
    n = rows * slots
    cos, sin = vision_rotary(batch["patch_pos"].reshape(n * q, 2), cfg)  # [1, rows * slots * Q, head_dim]
    cos, sin = cos.reshape(n, q, -1), sin.reshape(n, q, -1)
    x = visual.patch_embed(batch["pixel_values"].reshape(n * q, -1)).reshape(n, q, -1)  # [rows * slots, Q, hidden]
    frames, windows = batch["frame_ids"].reshape(n, q), batch["window_ids"].reshape(n, q)
    for i, block in enumerate(visual.blocks):
        windowed = cfg.window_size and i not in cfg.fullatt_block_indexes
        x = run_layer(block, visual.remat, x, cos, sin, windows if windowed else frames)
    merged = visual.merger(x.reshape(n * q, -1)).reshape(rows, slots * q // cfg.merge_unit, -1)
    return jnp.take_along_axis(merged, batch["unit_restore"][..., None], axis=1)


def row_embeds(model, input_ids: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """Token embeddings `[rows, seq, embed]` of a Qwen2-VL model with each row's merged vision features in
    place of its image / video pad tokens (the row's k-th pad token takes its k-th feature)."""
    cfg = model.config.vision
    embeds = model.model.embed(input_ids)  # [rows, seq, embed]
    feats = row_features(model.visual, batch)  # [rows, units, embed]
    is_pad = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)  # [rows, seq]
    rank = jnp.where(is_pad, jnp.cumsum(is_pad, axis=-1) - 1, 0)  # [rows, seq]
    picked = jnp.take_along_axis(feats, rank[..., None], axis=1, mode="clip").astype(embeds.dtype)
    return jnp.where(is_pad[..., None], picked, embeds)
