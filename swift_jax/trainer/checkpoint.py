"""Orbax checkpoints of the train state plus the data iterator's position, for exact resume.

Each checkpoint `run_dir/checkpoint_STEP/` holds `state` (step, trainable parameters, optimizer state,
RNG streams; for LoRA only the adapters, never the frozen base) and `data` (the grain iterator state as
JSON). Saves are asynchronous and atomic (orbax writes to a temporary folder and renames), and
`save_total_limit` keeps the newest N.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STEP_PREFIX = "checkpoint"


def checkpoint_manager(run_dir: str, *, save_total_limit: int | None, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager writing `run_dir/checkpoint_STEP` folders."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=save_total_limit,
        enable_async_checkpointing=async_save,
        step_prefix=STEP_PREFIX,
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(run_dir), options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None) -> None:
    """Start an (async) save of `state` and the iterator state at `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    args["data"] = ocp.args.JsonSave(data_state or {})
    manager.save(step, args=ocp.args.Composite(**args))


def step_dir(run_dir: str, step: int) -> str:
    """The folder of the checkpoint of `step` in a run."""
    return os.path.join(run_dir, f"{STEP_PREFIX}_{step}")


def parse_checkpoint_dir(path: str) -> tuple[str, int]:
    """(run_dir, step) of a checkpoint folder `.../checkpoint_STEP`, with an error naming the path."""
    path = os.path.abspath(path.rstrip("/"))
    name = os.path.basename(path)
    prefix = STEP_PREFIX + "_"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit() or not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: expected an existing folder named {prefix}STEP")
    return os.path.dirname(path), int(name[len(prefix) :])


def restore(path: str, abstract_state: Any) -> tuple[Any, dict]:
    """Restore (state, data iterator state) from a checkpoint folder into `abstract_state`'s shardings.

    `abstract_state` may live on a different mesh than the one that saved: orbax reshards on restore.
    """
    run_dir, step = parse_checkpoint_dir(path)
    manager = checkpoint_manager(run_dir, save_total_limit=None, async_save=False)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    manager.close()
    return restored["state"], dict(restored["data"] or {})
