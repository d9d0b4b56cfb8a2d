"""The `score` head: transformers' `*ForSequenceClassification` head (a linear map, no bias) on the decoder.

A reward model's value head has one label; a classifier (`--task_type seq_cls`) has `--num_labels`.

It trains beside LoRA adapters (PEFT's `modules_to_save`), is saved in a `SEQ_CLS` PEFT adapter as
`score.weight`, read back by `--adapters`, and written as `score.weight` of a sequence-classification
checkpoint by a merged export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class HeadParam(nnx.LoRAParam):
    """A parameter trained under LoRA too (PEFT's `modules_to_save`): the reward model's value head."""


class ValueHead(nnx.Module):
    """`score`: hidden `[..., embed]` -> a scalar reward `[...]` (`__call__`, one label) or the logits
    `[..., num_labels]` (`logits`), as transformers' `*ForSequenceClassification` head (no bias)."""

    def __init__(self, embed: int, *, num_labels: int = 1, std: float = 0.02, rngs: nnx.Rngs):
        self.kernel = HeadParam(jax.random.normal(rngs.params(), (embed, num_labels), jnp.float32) * std,
                                logical_axes=("embed", None))

    @property
    def num_labels(self) -> int:
        return self.kernel.shape[-1]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """`[..., embed]` -> `[..., num_labels]` in float32."""
        return hidden.astype(jnp.float32) @ self.kernel[...]

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.logits(hidden)[..., 0]


def attach_value_head(model, *, seed: int = 0, num_labels: int = 1):
    """Give `model` a `score` head of `num_labels` outputs (in place) unless it has one; returns the model."""
    if getattr(model, "score", None) is None:
        model.score = ValueHead(model.config.hidden_size, num_labels=num_labels,
                                std=getattr(model.config, "initializer_range", 0.02), rngs=nnx.Rngs(seed))
    return model


def has_value_head(model) -> bool:
    """True when `model` carries a reward model's `score` head."""
    return getattr(model, "score", None) is not None
