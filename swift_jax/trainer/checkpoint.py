"""Orbax checkpoints of the train state plus the data iterator's position, for exact resume.

Each checkpoint `run_dir/checkpoint-STEP/` (ms-swift's and transformers' name) holds `state` (step, trainable
parameters, optimizer state, RNG streams; for LoRA only the adapters, never the frozen base) and `data` (the
grain iterator state as JSON; `--save_only_model`: no optimizer state), plus what the trainer adds once orbax has finalised it (`args.json`, the PEFT
adapter or HF model files). Saves are asynchronous and atomic (orbax writes to a temporary folder and renames).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointName(ocp.step.NameFormat):
    """Orbax step folders named `checkpoint-STEP`, as ms-swift and transformers name them."""

    def build_name(self, step: int) -> str:
        return f"{CHECKPOINT_PREFIX}{step}"

    def _metadata(self, path: epath.Path) -> ocp.step.Metadata | None:
        match = _CHECKPOINT_NAME.match(path.name)
        if match is None or not ocp.step.is_path_finalized(path):
            return None  # another file, or a save still in flight
        return ocp.step.Metadata(step=int(match.group(1)), path=path)

    def find_all(self, base_path) -> Iterable[ocp.step.Metadata]:
        return ocp.step.build_step_metadatas(epath.Path(base_path).iterdir(), self._metadata)

    def find_step(self, base_path, step: int) -> ocp.step.Metadata:
        path = epath.Path(base_path) / self.build_name(step)
        metadata = self._metadata(path) if path.exists() else None
        if metadata is None:
            raise ValueError(f"no finished checkpoint for step {step} in {base_path}")
        return metadata


def checkpoint_manager(run_dir: str, *, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager writing `run_dir/checkpoint-STEP` folders. Rotation (`save_total_limit`) is the trainer's,
    because it must spare the best checkpoint, which orbax's `max_to_keep` does not know about."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, enable_async_checkpointing=async_save, step_name_format=CheckpointName(), create=True
    )
    return ocp.CheckpointManager(os.path.abspath(run_dir), options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None) -> None:
    """Start an (async) save of `state` and the iterator state at `step`; every process calls it."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}))
    manager.save(step, args=args)


def step_dir(run_dir: str, step: int) -> str:
    """The folder of the checkpoint of `step` in a run."""
    return os.path.join(run_dir, f"{CHECKPOINT_PREFIX}{step}")


def parse_checkpoint_dir(path: str, flag: str = "--resume_from_checkpoint") -> tuple[str, int]:
    """(run_dir, step) of a checkpoint folder `.../checkpoint-STEP`, with an error naming the flag and path."""
    path = os.path.abspath(path.rstrip("/"))
    match = _CHECKPOINT_NAME.match(os.path.basename(path))
    if match is None or not os.path.isdir(os.path.join(path, "state")):
        hint = " (folders named checkpoint_STEP come from an older swift_jax and do not resume)" if "checkpoint_" in path else ""
        raise FileNotFoundError(f"{flag} {path}: expected a finished checkpoint folder {CHECKPOINT_PREFIX}STEP with a state/ subfolder{hint}")
    return os.path.dirname(path), int(match.group(1))


def restore(path: str, abstract_state: Any, *, with_data: bool = True, model_only: bool = False) -> tuple[Any, dict]:
    """Restore (state, data iterator state) from a checkpoint folder into `abstract_state`'s shardings.

    `abstract_state` may live on a different mesh than the one that saved: orbax reshards on restore.
    `model_only`: the checkpoint was written with `--save_only_model` (its state has no optimizer state; the
    restored state's `opt_state` is None).
    """
    if model_only:
        abstract_state = dataclasses.replace(abstract_state, opt_state=None)
    run_dir, step = parse_checkpoint_dir(path)
    manager = checkpoint_manager(run_dir, async_save=False)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    items = {"state": ocp.args.StandardRestore(target)}
    if with_data:
        items["data"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    manager.close()
    return restored["state"], (dict(restored["data"] or {}) if with_data else {})


def steps_to_delete(steps: Iterable[int], keep_newest: int | None, keep: Iterable[int] = ()) -> list[int]:
    """The checkpoints that `save_total_limit` rotation removes: all but the newest `keep_newest` and the
    steps in `keep` (the best by eval loss, as transformers' rotation spares it; so a limit of 1 may keep 2)."""
    steps = sorted(steps)
    if keep_newest is None or keep_newest <= 0:
        return []
    spared = set(steps[-keep_newest:]) | set(keep)
    return [s for s in steps if s not in spared]
