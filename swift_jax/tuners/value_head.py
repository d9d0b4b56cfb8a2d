"""A reward model's value head (`score`): transformers' `*ForSequenceClassification` head with one label.

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
    """`score`: hidden `[..., embed]` -> a scalar reward `[...]` (transformers' `*ForSequenceClassification`
    head with num_labels 1, no bias)."""

    def __init__(self, embed: int, *, std: float = 0.02, rngs: nnx.Rngs):
        self.kernel = HeadParam(jax.random.normal(rngs.params(), (embed, 1), jnp.float32) * std, logical_axes=("embed", None))

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return (hidden.astype(jnp.float32) @ self.kernel[...])[..., 0]


def attach_value_head(model, *, seed: int = 0):
    """Give `model` a `score` value head (in place) unless it has one; returns the model."""
    if getattr(model, "score", None) is None:
        model.score = ValueHead(model.config.hidden_size, std=getattr(model.config, "initializer_range", 0.02),
                                rngs=nnx.Rngs(seed))
    return model


def has_value_head(model) -> bool:
    """True when `model` carries a reward model's `score` head."""
    return getattr(model, "score", None) is not None
