"""The generation engine (continuous batching over KV-cache slots) and what it serves: see `core.Engine`.

Names are imported on first use, so `engine.args` (read by the command line) does not load JAX."""

import importlib

_NAMES = {
    "Engine": "core", "QueueFull": "core", "default_eos": "core",
    "GenerationConfig": "params", "GenerationOutput": "params", "TOP_LOGPROBS": "params",
    "Delta": "requests", "Request": "requests",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'swift_jax.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"swift_jax.engine.{_NAMES[name]}"), name)
