"""The generation engine (continuous batching over KV-cache slots) and what it serves: see `core.Engine`."""

from swift_jax.engine.core import Engine, QueueFull, default_eos
from swift_jax.engine.params import TOP_LOGPROBS, GenerationConfig, GenerationOutput
from swift_jax.engine.requests import Delta, Request

__all__ = ["Engine", "QueueFull", "default_eos", "GenerationConfig", "GenerationOutput", "Delta", "Request", "TOP_LOGPROBS"]
