"""Loading reward plugins (`--external_plugins`), building `--reward_funcs`, scoring a batch of completions."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

from . import swift_compat
from .orm import orms


def load_plugins(paths: str | Sequence[str]) -> dict[str, type]:
    """Import each plugin file (it registers into `orms`, as ms-swift's `--external_plugins`); returns `orms`.
    Without ms-swift installed, a file's `from swift.rewards import ORM, orms` gets swift_jax's (swift_compat)."""
    swift_compat.install()
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--external_plugins: no file {path!r}")
        name = "swift_jax_plugin_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise RuntimeError(f"--external_plugins {path}: importing it failed: {type(e).__name__}: {e}") from e
    return orms


def reward_name(func: Callable) -> str:
    """The name a reward logs under (`rewards/{name}/mean`): a function's name, a reward model's `name` (its
    folder) or an ORM's class name (ms-swift)."""
    if inspect.isfunction(func):
        return func.__name__
    return getattr(func, "name", None) or type(func).__name__


def build_reward_funcs(names: Sequence[str | Callable], args: Any = None) -> list[Callable]:
    """Instantiate `--reward_funcs` (registry names, or callables passed through) with the run's args."""
    funcs = []
    for name in names:
        if callable(name):
            funcs.append(name)
        elif name in orms:
            funcs.append(orms[name](args=args))
        else:
            raise ValueError(
                f"--reward_funcs {name!r} is not registered; known: {sorted(orms)}. Register your own in a plugin "
                "file (`from swift_jax.rewards import ORM, orms`; `orms['name'] = MyReward`) and pass it with --external_plugins"
            )
    return funcs


def score_completions(funcs: Sequence[Callable], completions: list[str], columns: dict[str, list]) -> np.ndarray:
    """`[N, n_funcs]` float32 rewards; a None reward becomes NaN. `columns` are batched keyword arguments
    (the dataset's extra columns, `response_token_ids`, ...), each a list of N values."""
    out = np.zeros((len(completions), len(funcs)), np.float32)
    for i, func in enumerate(funcs):
        values = func(completions, **columns)
        if len(values) != len(completions):
            raise ValueError(f"reward {reward_name(func)} returned {len(values)} values for {len(completions)} completions")
        out[:, i] = [np.nan if v is None else float(v) for v in values]
    return out
