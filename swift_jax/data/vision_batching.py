"""Batches of multimodal samples (Qwen2-VL family): padded one sample per row, or packed several per row.

A row holds the text arrays of `batching` (`input_ids`, `labels`, `segment_ids`, [`loss_scale`]) with
`positions` `[seq, 3]` (M-RoPE, restarting in each segment), plus its samples' patches and their layout
(`models.vision.rows`: `pixel_values`, `patch_pos`, `frame_ids`, `window_ids`, `unit_restore`).

Shapes stay static per bucket: the sequence is bucketed as text batches are (`batching.bucket_length`), and
the patches go one frame per slot (`models.vision.rows.frame_slots`: slots of a power of two patches, as many
slots as the most frames a row of the step holds, a power of two), so a run compiles once per (length, slot
shape) bucket and the vision tower never attends across a packed row's images. Packing is grain's best-fit
packer over both token and patch features: a sample joins a row only when its tokens and its patches fit.
"""

from __future__ import annotations

import grain
import grain.experimental as grain_exp
import numpy as np

from swift_jax.data import batching
from swift_jax.data.templates import IGNORE
from swift_jax.models.vision.rows import frame_slots, pad_layout, packed_ids

PATCH_KEYS = ("pixel_values", "patch_pos", "frame_ids", "window_ids")
VISION_KEYS = PATCH_KEYS + ("unit_restore",)
MIN_PATCHES = 64


def features(weighted: bool) -> tuple[str, ...]:
    """The arrays of a multimodal batch row."""
    return batching.features(weighted) + VISION_KEYS


def patch_bucket(patches: int, merge_unit: int, minimum: int = MIN_PATCHES) -> int:
    """The padded patch count for rows holding at most `patches`: a power of two, at least `minimum`."""
    return max(minimum, merge_unit, 1 << max(0, int(patches) - 1).bit_length())


def pad_row(sample: dict[str, np.ndarray], length: int, num_patches: int, pad_id: int, merge_unit: int) -> dict:
    """One sample as a row of `length` tokens and `num_patches` patches."""
    text = {k: sample[k] for k in ("input_ids", "labels", "loss_scale") if k in sample}
    row = batching.pad_sample(text, length, pad_id)
    row["positions"] = np.zeros((length, 3), np.int32)
    row["positions"][: len(sample["mrope"])] = sample["mrope"]
    row.update(pad_layout(sample, num_patches, merge_unit))
    return row


def empty_sample(patch_dim: int, weighted: bool) -> dict[str, np.ndarray]:
    """A sample of nothing (fills validation batches)."""
    sample = {
        "input_ids": np.zeros(0, np.int32), "labels": np.zeros(0, np.int32), "mrope": np.zeros((0, 3), np.int32),
        "pixel_values": np.zeros((0, patch_dim), np.float32), "patch_pos": np.zeros((0, 2), np.int32),
        "frame_ids": np.zeros(0, np.int32), "window_ids": np.zeros(0, np.int32), "unit_restore": np.zeros(0, np.int32),
    }
    if weighted:
        sample["loss_scale"] = np.zeros(0, np.float32)
    return sample


def pad_group(samples: list[dict], length: int, pad_id: int, merge_unit: int) -> dict[str, np.ndarray]:
    """Samples as one batch of `length`-token rows sharing one patch bucket and frame-slot shape."""
    patches = patch_bucket(max(len(s["frame_ids"]) for s in samples), merge_unit)
    return batching.stack_rows(frame_slots([pad_row(s, length, patches, pad_id, merge_unit) for s in samples], merge_unit))


class _PadGroup(grain_exp.FlatMapTransform):
    """A step's samples -> `batches_per_step` batches padded to one length and one patch bucket."""

    def __init__(self, batch_size, batches_per_step, max_length, pad_id, multiple, merge_unit):
        self.batch_size, self.max_fan_out = batch_size, batches_per_step
        self.max_length, self.pad_id, self.multiple, self.unit = max_length, pad_id, multiple, merge_unit

    def flat_map(self, samples):
        width = batching.bucket_length(max(len(s["input_ids"]) for s in samples), self.max_length, self.multiple)
        patches = patch_bucket(max(len(s["frame_ids"]) for s in samples), self.unit)
        rows = frame_slots([pad_row(s, width, patches, self.pad_id, self.unit) for s in samples], self.unit)
        return batching.batches_of(rows, self.batch_size)


def padded_batches(samples: grain.IterDataset, batch_size: int, max_length: int, pad_id: int, merge_unit: int,
                   batches_per_step: int = 1, multiple: int = batching.PAD_MULTIPLE) -> grain.IterDataset:
    """Batches of one sample per row (see the module docstring)."""
    groups = samples.batch(batch_size * batches_per_step, drop_remainder=True, batch_fn=list)
    return grain_exp.FlatMapIterDataset(groups, _PadGroup(batch_size, batches_per_step, max_length, pad_id, multiple, merge_unit))


def _packed_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed features -> a batch row (`batching.rename_packed`, with each segment's own M-RoPE
    positions; vision ids made row-global)."""
    return {**batching.rename_packed(row), "positions": row["mrope"].astype(np.int32), **packed_ids(row)}


class _SlotGroup(grain_exp.FlatMapTransform):
    """A step's packed rows -> `batches_per_step` batches sharing one frame-slot shape."""

    def __init__(self, batch_size: int, batches_per_step: int, merge_unit: int):
        self.batch_size, self.max_fan_out, self.unit = batch_size, batches_per_step, merge_unit

    def flat_map(self, rows):
        rows = frame_slots(rows, self.unit)
        return batching.batches_of(rows, self.batch_size)


def packed_batches(samples: grain.IterDataset, batch_size: int, max_length: int, pad_id: int, merge_unit: int,
                   num_bins: int, seed: int, shuffle: bool, weighted: bool = False, batches_per_step: int = 1,
                   max_patches: int | None = None) -> grain.IterDataset:
    """Packed rows of `max_length` tokens and at most `max_patches` patches (default: `max_length *
    merge_unit`, as many as the tokens could take), batched as `padded_batches` does."""
    patches = max_patches or max_length * merge_unit
    lengths = {"input_ids": max_length, "labels": max_length, "mrope": max_length}
    padding = {"input_ids": pad_id, "labels": IGNORE, "mrope": 0}
    for key in PATCH_KEYS:
        lengths[key], padding[key] = patches, 0
    lengths["unit_restore"], padding["unit_restore"] = patches // merge_unit, 0
    if weighted:
        lengths["loss_scale"], padding["loss_scale"] = max_length, 0.0
    packed = grain_exp.BestFitPackIterDataset(
        samples, length_struct=lengths, num_packing_bins=num_bins, seed=seed, shuffle_bins=shuffle, padding_struct=padding,
    ).map(_packed_row)
    groups = packed.batch(batch_size * batches_per_step, drop_remainder=True, batch_fn=list)
    return grain_exp.FlatMapIterDataset(groups, _SlotGroup(batch_size, batches_per_step, merge_unit))
