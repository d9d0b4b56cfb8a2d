"""The run folder, as ms-swift lays it out, decided once and agreed by every process.

    output_dir/vN-YYYYMMDD-HHMMSS/   (or output_dir itself with --add_version false)
        args.json            flat, ms-swift's argument names as keys; copied into every checkpoint
        logging.jsonl        one line per log step (+ eval lines), ending with a summary line
        val_dataset.jsonl    the validation rows when --split_dataset_ratio carved them from --dataset
        checkpoint-STEP/     orbax state + data position (+ PEFT adapter or HF model files, args.json)
        images/*.png  runs/  plots and tensorboard events
        last, best           symlinks to checkpoints with --create_checkpoint_symlink
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from typing import Any

import jax
import numpy as np

ARGS_FILE = "args.json"
_NAME_BYTES = 256


def _next_version_name(output_dir: str) -> str:
    versions = [int(m.group(1)) for d in os.listdir(output_dir) if (m := re.match(r"v(\d+)-", d))]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"v{max(versions, default=-1) + 1}-{stamp}"


def broadcast_string(value: str) -> str:
    """Process 0's `value` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    raw = value.encode()
    if len(raw) > _NAME_BYTES:
        raise ValueError(f"cannot broadcast a name longer than {_NAME_BYTES} bytes: {value!r}")
    buffer = np.zeros(_NAME_BYTES, np.uint8)
    buffer[: len(raw)] = np.frombuffer(raw, np.uint8)
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(agreed[agreed != 0].astype(np.uint8)).decode()


def create_run_dir(output_dir: str, *, add_version: bool = True) -> str:
    """The run's folder: process 0 picks `output_dir/vN-<timestamp>` (N one more than the highest existing
    version, as ms-swift) and every process receives the same path, so all hand orbax the same folders."""
    name = ""
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        name = _next_version_name(output_dir) if add_version else ""
        os.makedirs(os.path.join(output_dir, name), exist_ok=True)
    name = broadcast_string(name)
    return os.path.abspath(os.path.join(output_dir, name))


def flat_args(args: Any) -> dict[str, Any]:
    """A (nested) arguments dataclass as one flat dict keyed by field name, ms-swift's `args.json` layout."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_args(value))
        else:
            flat[field.name] = value
    return flat


def write_args(folder: str, args: Any) -> None:
    """Write `args.json` (flat, ms-swift's names) into `folder`."""
    with open(os.path.join(folder, ARGS_FILE), "w") as f:
        json.dump(flat_args(args), f, indent=2, default=str, ensure_ascii=False)


def read_args(folder: str) -> dict[str, Any] | None:
    """The flat `args.json` of a run or checkpoint folder, or None when there is none."""
    path = os.path.join(folder, ARGS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_rows(path: str, rows) -> None:
    """Rows (dicts) as JSON lines, e.g. the split-off validation set."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def link(target: str, link_path: str) -> str:
    """Point the symlink `link_path` at `target` (relative, so the run folder stays movable)."""
    tmp = link_path + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(target, os.path.dirname(link_path)), tmp)
    os.replace(tmp, link_path)
    return link_path
