"""Pieces every vision-language model shares: a LayerNorm with bias (vision towers use it, decoders do
not), the towers' biased two-layer MLP, a layer call with optional rematerialisation, and the scatter of
vision features into the token embeddings at their pad tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import Linear, activation


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, computed in float32 (torch's `nn.LayerNorm`)."""

    def __init__(self, features: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class VisionMLP(nnx.Module):
    """`fc2(act(fc1(x)))` with biases: the MLP of the SigLIP (Gemma 3) and InternViT encoder layers."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, param_dtype, **kw):
        self.fc1 = Linear(hidden_size, intermediate_size, axes=("embed", "mlp"), use_bias=True, param_dtype=param_dtype, **kw)
        self.fc2 = Linear(intermediate_size, hidden_size, axes=("mlp", "embed"), use_bias=True, param_dtype=param_dtype, **kw)
        self.act = activation(hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


def run_layer(layer: nnx.Module, remat: bool, *args) -> jax.Array:
    """`layer(*args)`, recomputed in the backward pass when `remat` (`--vit_gradient_checkpointing`).

    The layer is split into a pure function of its state (as `decoder._remat_layer` does), so it also runs
    inside the trainer's plain `jax` transforms, and RNG streams (LoRA dropout) advance as in the plain call."""
    if not remat:
        return layer(*args)
    graphdef, state = nnx.split(layer)

    def run(state, *a):
        module = nnx.merge(graphdef, state)
        return module(*a), nnx.state(module, nnx.RngState)

    out, rng_state = jax.checkpoint(run)(state, *args)
    nnx.update(layer, rng_state)
    return out


def scatter_features(
    embeds: jax.Array, is_pad: jax.Array, features: jax.Array, offset: jax.Array | int = 0
) -> jax.Array:
    """`embeds` `[b, s, e]` with the k-th pad token (`is_pad` `[b, s]`, in reading order over the batch)
    replaced by `features[offset + k]` (transformers' `masked_scatter`); other tokens unchanged."""
    rank = jnp.cumsum(is_pad.reshape(-1)).reshape(is_pad.shape) - 1 + offset  # [b, s]
    picked = jnp.take(features, jnp.where(is_pad, rank, 0), axis=0, mode="clip").astype(embeds.dtype)  # [b, s, e]
    return jnp.where(is_pad[..., None], picked, embeds)
