"""NEFTune (Jain et al. 2023, `--neftune_noise_alpha`): uniform noise on the token embeddings while training.

As transformers' hook on the input embeddings: noise ~ U(-m, m) with `m = alpha / sqrt(seq * hidden)` for
an output `[batch, seq, hidden]`, in training mode only (`model.eval()` turns it off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class NEFTune(nnx.Module):
    """Adds NEFTune noise to embeddings `[batch, seq, hidden]` unless `deterministic`."""

    def __init__(self, alpha: float, *, seed: int):
        self.alpha = alpha
        self.rngs = nnx.Rngs(neftune=seed)
        self.deterministic = False  # model.eval() sets it

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        magnitude = self.alpha / jnp.sqrt(jnp.asarray(x.shape[-2] * x.shape[-1], jnp.float32))
        noise = jax.random.uniform(self.rngs.neftune(), x.shape, jnp.float32, -1.0, 1.0) * magnitude
        return (x.astype(jnp.float32) + noise).astype(x.dtype)


def add_neftune(model: nnx.Module, alpha: float, *, seed: int) -> nnx.Module:
    """Attach NEFTune to the model's input embedding (in place)."""
    if alpha <= 0:
        raise ValueError(f"--neftune_noise_alpha must be positive, got {alpha}")
    model.model.embed_tokens.neftune = NEFTune(alpha, seed=seed)
    return model
