"""Batches of multimodal samples of InternVL and Gemma 3 (whole tiles / images, `models.vision.tiles`):
padded one sample per row, or packed several per row.

A row holds the text arrays of `batching` (`input_ids`, `labels`, `segment_ids`, `positions`, [`loss_scale`])
plus `pixel_values` `[T, C, H, W]`: its samples' tiles in reading order, zero-padded. Shapes stay static per
bucket: the sequence is bucketed as text batches are, T is a power of two (the most tiles a row of the step
holds), so a run compiles once per (length, T). Packing is grain's best-fit packer over tokens and tiles: a
sample joins a row only when both fit. The functions mirror `vision_batching`'s (whose `merge_unit` argument
is here a `Tile`: a tile's shape and tokens), so the pipeline takes either.
"""

from __future__ import annotations

from typing import NamedTuple

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data import batching
from swift_jax.data.templates import IGNORE
from swift_jax.models.vision.tiles import tile_bucket


class Tile(NamedTuple):
    """One tile (InternVL) or image (Gemma 3): its pixel shape `(C, H, W)` and its tokens in the language model."""

    shape: tuple[int, int, int]
    tokens: int


def features(weighted: bool) -> tuple[str, ...]:
    """The arrays of a multimodal batch row."""
    return batching.features(weighted) + ("pixel_values",)


def empty_sample(tile: Tile, weighted: bool) -> dict[str, np.ndarray]:
    """A sample of nothing (fills validation batches)."""
    sample = {"input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32),
              "pixel_values": np.zeros((0, *tile.shape), np.float32)}
    if weighted:
        sample["loss_scale"] = np.zeros(0, np.float32)
    return sample


def _tiles(pixels: np.ndarray, count: int, tile: Tile) -> np.ndarray:
    """`pixels` `[n, C, H, W]` zero-padded (or cut, past the real tiles) to `[count, C, H, W]`."""
    out = np.zeros((count, *tile.shape), np.float32)
    n = min(count, len(pixels))
    out[:n] = pixels[:n]
    return out


def pad_group(samples: list[dict], length: int, pad_id: int, tile: Tile, count: int | None = None) -> dict[str, np.ndarray]:
    """Samples as one batch of `length`-token rows of `count` tiles (default: the bucket of the most tiles)."""
    count = count or tile_bucket(max(len(s["pixel_values"]) for s in samples))
    rows = []
    for s in samples:
        row = batching.pad_sample({k: s[k] for k in ("input_ids", "labels", "loss_scale") if k in s}, length, pad_id)
        rows.append({**row, "pixel_values": _tiles(s["pixel_values"], count, tile)})
    return batching.stack_rows(rows)


class _PadGroup(grain_exp.FlatMapTransform):
    """A step's samples -> `batches_per_step` batches padded to one length and one tile bucket."""

    def __init__(self, batch_size, batches_per_step, max_length, pad_id, multiple, tile):
        self.batch_size, self.max_fan_out = batch_size, batches_per_step
        self.max_length, self.pad_id, self.multiple, self.tile = max_length, pad_id, multiple, tile

    def flat_map(self, samples):
        width = batching.bucket_length(max(len(s["input_ids"]) for s in samples), self.max_length, self.multiple)
        count = tile_bucket(max(len(s["pixel_values"]) for s in samples))
        return [pad_group(samples[i : i + self.batch_size], width, self.pad_id, self.tile, count)
                for i in range(0, len(samples), self.batch_size)]


def padded_batches(samples: grain.IterDataset, batch_size: int, max_length: int, pad_id: int, tile: Tile,
                   batches_per_step: int = 1, multiple: int = batching.PAD_MULTIPLE) -> grain.IterDataset:
    """Batches of one sample per row (see the module docstring)."""
    groups = samples.batch(batch_size * batches_per_step, drop_remainder=True, batch_fn=list)
    return grain_exp.FlatMapIterDataset(groups, _PadGroup(batch_size, batches_per_step, max_length, pad_id, multiple, tile))


def _packed_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed features -> a batch row, with its real tile count (`tiles`, dropped when batched)."""
    out = batching.rename_packed(row)
    out["pixel_values"] = row["pixel_values"].astype(np.float32)
    out["tiles"] = int((row["pixel_values_segment_ids"] > 0).sum())
    return out


class _TileGroup(grain_exp.FlatMapTransform):
    """A step's packed rows -> `batches_per_step` batches sharing the tile bucket of their fullest row."""

    def __init__(self, batch_size: int, batches_per_step: int, tile: Tile):
        self.batch_size, self.max_fan_out, self.tile = batch_size, batches_per_step, tile

    def flat_map(self, rows):
        count = tile_bucket(max(r["tiles"] for r in rows))
        rows = [{**{k: v for k, v in r.items() if k != "tiles"}, "pixel_values": _tiles(r["pixel_values"], count, self.tile)}
                for r in rows]
        return batching.batches_of(rows, self.batch_size)


def packed_batches(samples: grain.IterDataset, batch_size: int, max_length: int, pad_id: int, tile: Tile,
                   num_bins: int, seed: int, shuffle: bool, weighted: bool = False, batches_per_step: int = 1,
                   max_tiles: int | None = None) -> grain.IterDataset:
    """Packed rows of `max_length` tokens and at most `max_tiles` tiles (default: as many as the tokens could
    take), batched as `padded_batches` does."""
    tiles = max_tiles or max(1, max_length // tile.tokens)
    lengths = {"input_ids": max_length, "labels": max_length, "pixel_values": tiles}
    padding = {"input_ids": pad_id, "labels": IGNORE, "pixel_values": 0.0}
    if weighted:
        lengths["loss_scale"], padding["loss_scale"] = max_length, 0.0
    packed = grain_exp.BestFitPackIterDataset(
        samples, length_struct=lengths, num_packing_bins=num_bins, seed=seed, shuffle_bins=shuffle, padding_struct=padding,
    ).map(_packed_row)
    groups = packed.batch(batch_size * batches_per_step, drop_remainder=True, batch_fn=list)
    return grain_exp.FlatMapIterDataset(groups, _TileGroup(batch_size, batches_per_step, tile))
