"""Streamed safetensors IO: read tensor by tensor (or slice by slice), write size-capped shards.

Never holds a whole state dict in host memory: reading opens each tensor lazily, writing fills one
shard at a time.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsReader:
    """Maps tensor names to the (possibly sharded) safetensors files of a model folder.

    `aliases` `(regex, replacement)` rename stored names to the ones callers use (another writer's spelling
    of the same tensor, e.g. transformers 5's `vision_tower.` for the hub's `vision_tower.vision_model.`)."""

    def __init__(self, model_dir: str, aliases: tuple[tuple[str, str], ...] = ()):
        self.model_dir = model_dir
        index_path = os.path.join(model_dir, INDEX_FILE)
        single_path = os.path.join(model_dir, SINGLE_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {name: os.path.join(model_dir, file) for name, file in weight_map.items()}
        elif os.path.exists(single_path):
            with safe_open(single_path, framework="numpy") as f:
                self.files = {name: single_path for name in f.keys()}
        else:
            found = sorted(os.listdir(model_dir))
            raise FileNotFoundError(
                f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} found (files: {found}); "
                "only safetensors checkpoints are supported"
            )
        self.stored = {name: name for name in self.files}  # our name -> the name in the file
        for pattern, replacement in aliases:
            self.stored = {re.sub(pattern, replacement, ours, count=1): kept for ours, kept in self.stored.items()}
        self.files = {ours: self.files[kept] for ours, kept in self.stored.items()}

    def names(self) -> list[str]:
        return sorted(self.files)

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        """Shape and safetensors dtype string (e.g. 'BF16') without reading the data."""
        with safe_open(self.files[name], framework="numpy") as f:
            sl = f.get_slice(self.stored[name])
            return tuple(sl.get_shape()), sl.get_dtype()

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor `name`, or only `index` of it (read from disk, not sliced after loading)."""
        with safe_open(self.files[name], framework="numpy") as f:
            if index is None:
                return f.get_tensor(self.stored[name])
            return f.get_slice(self.stored[name])[index]


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '10KB' / 1234 -> bytes (decimal units, as transformers uses)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected bytes or a size like '5GB' or '200MB'")
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(float(m.group(1)) * units[(m.group(2) or "").upper()])


def write_sharded_safetensors(
    output_dir: str,
    entries: Iterable[tuple[str, int]],
    fetch: Callable[[str], np.ndarray],
    *,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Write tensors into shards of at most `max_shard_size` bytes (a larger single tensor gets its own).

    `entries` lists (hf_name, nbytes) in write order, so the shard plan is known before any data is
    read; `fetch(name)` produces one host array at a time. One shard -> `model.safetensors`; several ->
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`. Returns the file names.
    """
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    shard_bytes, total = 0, 0
    for name, nbytes in entries:
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += nbytes
        total += nbytes
    os.makedirs(output_dir, exist_ok=True)
    n = len(shards)
    files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for file, names in zip(files, shards):
        save_file({name: fetch(name) for name in names}, os.path.join(output_dir, file), metadata={"format": "pt"})
    stale_index = os.path.join(output_dir, INDEX_FILE)
    if n > 1:
        weight_map = {name: file for file, names in zip(files, shards) for name in names}
        with open(stale_index, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    elif os.path.exists(stale_index):
        os.remove(stale_index)
    return files


def iter_tensors(reader: SafetensorsReader) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) one tensor at a time."""
    for name in reader.names():
        yield name, reader.read(name)
