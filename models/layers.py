"""Building blocks shared by every architecture: linear, embedding, RMSNorm, gated MLP, rotary embeddings,
activations, attention against a KV cache, and `Buffer` (non-trained checkpoint tensors).

Parameters are `nnx.Param`s carrying `logical_axes` metadata (`embed`, `mlp`, `heads`, `kv_heads`,
`vocab`, ...); `swift_jax.parallel` maps those names to mesh axes, so no layer knows about meshes.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.kernels import attention

from .config import ModelConfig, RopeConfig

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the activation function for an HF `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Linear(nnx.Module):
    """`y = x @ kernel + bias` with kernel `[in, out]` (HF stores the transpose, `[out, in]`).

    A LoRA adapter, when `swift_jax.tuners.lora` attaches one, adds `scale * (x @ lora_a) @ lora_b`
    without ever forming the merged weight.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str, str],
        use_bias: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype
        init = jax.nn.initializers.normal(init_std)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype), logical_axes=axes)
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), param_dtype), logical_axes=(axes[1],)) if use_bias else None
        )
        self.lora = nnx.data(None)  # an adapter module, set by swift_jax.tuners.lora.loraize

    def weight(self) -> jax.Array:
        """The kernel `[in, out]` in the compute dtype (dequantized when QLoRA stored it quantized)."""
        kernel = self.kernel.get_value()
        if not isinstance(kernel, jax.Array):  # a qwix QArray (QLoRA's base); qwix is imported only when used
            import qwix

            kernel = qwix.dequantize(kernel)
        return kernel.astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = x @ self.weight()
        if self.lora is not None:  # an attachment adds `lora(x)`, or (DoRA) rewrites the output with `adapt`
            adapt = getattr(self.lora, "adapt", None)
            y = adapt(x, y, self.weight) if adapt is not None else y + self.lora(x)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Buffer(nnx.Variable):
    """A tensor loaded from and saved to the checkpoint but never trained (HF's persistent buffers,
    e.g. deepseek_v3's `e_score_correction_bias`): not an `nnx.Param`, so neither full fine-tuning
    (which trains `nnx.Param`) nor LoRA puts it in the optimizer; it rides in the frozen state."""


class MLP(nnx.Module):
    """Gated MLP: `down(act(gate(x)) * up(x))`; Phi-3 computes gate and up with one `gate_up_proj`.

    `intermediate_size` overrides the config's (deepseek_v3's shared experts are narrower).
    """

    def __init__(self, cfg: ModelConfig, *, intermediate_size: int | None = None, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, init_std=cfg.initializer_range, rngs=rngs)
        e, m = cfg.hidden_size, intermediate_size or cfg.intermediate_size
        self.fused = cfg.fused_gate_up
        if self.fused:  # HF order along the output: gate, then up
            self.gate_up_proj = Linear(e, 2 * m, axes=("embed", "mlp"), use_bias=cfg.mlp_bias, **kw)
        else:
            self.gate_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=cfg.mlp_bias, **kw)
            self.up_proj = Linear(e, m, axes=("embed", "mlp"), use_bias=cfg.mlp_bias, **kw)
        self.down_proj = Linear(m, e, axes=("mlp", "embed"), use_bias=cfg.mlp_bias, **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[..., embed] -> [..., embed]`."""
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)  # [..., mlp] each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


def write_at(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """`buffer` `[b, max_len, ...]` with `new` `[b, s, ...]` written at slots `[index, index + s)` along axis 1:
    one `index` `[]` for every row (left-padded batches), or one per row `[b]` (the engine's slots, each at its
    own length)."""
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(buffer, new, index, axis=1)
    return jax.vmap(lambda row, piece, at: jax.lax.dynamic_update_slice_in_dim(row, piece, at, axis=0))(buffer, new, index)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, cache, **options):
    """Causal attention of `q` `[b, s, h, d]` against one layer's KV cache after writing `k`, `v`
    `[b, s, kv, d]` at its index; `cache = (keys, values, kv_segment_ids, index[, bidirectional_ids])`,
    keys/values `[b, max_len, kv, d]`, index `[]` or `[b]` (`write_at`), bidirectional_ids `[b, max_len]` (see `attention`). Returns
    `(out [b, s, h, d], (keys, values))`. `options` are the mask options of `attention` (sliding_window,
    logits_soft_cap, scale)."""
    keys, values, kv_segment_ids, index, *blocks = cache
    if blocks:
        options = {**options, "bidirectional_ids": blocks[0]}
    keys = write_at(keys, k.astype(keys.dtype), index)
    values = write_at(values, v.astype(values.dtype), index)
    out = attention(
        q, keys, values, segment_ids=kv_segment_ids, q_segment_ids=segment_ids, causal=True, q_offset=index, **options
    )
    return out, (keys, values)


class Embed(nnx.Module):
    """Token embedding table `[vocab, embed]`; `attend` reuses it as a tied output projection."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        init = jax.nn.initializers.normal(init_std)
        self.embedding = nnx.Param(
            init(rngs.params(), (num_embeddings, features), param_dtype), logical_axes=("vocab", "embed")
        )
        self.neftune = nnx.data(None)  # training noise, set by swift_jax.tuners.neftune.add_neftune

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)
        return x if self.neftune is None else self.neftune(x)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table: `x @ embedding.T`."""
        return x.astype(self.dtype) @ self.embedding[...].astype(self.dtype).T


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, with HF's two conventions for the scale.

    `offset=0` (Llama, Qwen, Phi-3): cast back to the input dtype, then multiply by `scale`.
    `offset=1` (Gemma): multiply by `(1 + scale)` in float32, then cast back; `scale` starts at zero.
    """

    def __init__(
        self,
        features: int,
        *,
        eps: float,
        axis_name: str = "embed",
        param_dtype: jnp.dtype = jnp.float32,
        offset: float = 0.0,
    ):
        self.eps = eps
        self.offset = offset
        init = jnp.zeros if offset else jnp.ones
        self.scale = nnx.Param(init((features,), param_dtype), logical_axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        in_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (x32 * (self.offset + self.scale[...].astype(jnp.float32))).astype(in_dtype)
        return self.scale[...].astype(in_dtype) * x32.astype(in_dtype)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """`cap * tanh(x / cap)` (Gemma's logit soft-capping); the identity when `cap` is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


# ---------------------------------------------------------------------------------------------------
# Rotary position embeddings: inverse frequencies per rope_type (mirrors transformers' ROPE_INIT_FUNCTIONS)
# ---------------------------------------------------------------------------------------------------


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))


def _yarn(rope: RopeConfig, dim: int, max_pos: int) -> tuple[np.ndarray, float]:
    factor = rope.factor
    original = rope.original_max_position_embeddings or max_pos
    if factor is None:
        factor = max_pos / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = rope.theta ** (np.arange(0, dim, 2).astype(np.float32) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention_factor)


def _llama3(rope: RopeConfig, dim: int) -> np.ndarray:
    inv_freq = _default_inv_freq(rope.theta, dim)
    factor, low_ff, high_ff = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _longrope(rope: RopeConfig, dim: int, max_pos: int, factors: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """Phi-3 LongRoPE: default frequencies divided by per-frequency `factors`, and the attention factor
    `sqrt(1 + log(factor) / log(original))` with `factor` defaulting to max_pos / original (as HF)."""
    original = rope.original_max_position_embeddings or max_pos
    factor = rope.factor if rope.factor is not None else max_pos / original
    attention_factor = rope.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    if factors is None or len(factors) != dim // 2:
        raise ValueError(f"longrope short_factor/long_factor need {dim // 2} entries (rotary dim {dim}), got {factors}")
    inv_freq = 1.0 / (np.asarray(factors, np.float32) * rope.theta ** (np.arange(0, dim, 2).astype(np.float32) / dim))
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_frequencies(rope: RopeConfig, head_dim: int, max_pos: int) -> tuple[np.ndarray, float]:
    """Static inverse frequencies `[rot_dim // 2]` and the cos/sin scale for a rope config.

    `dynamic` returns its unscaled frequencies here and `longrope` its short ones; `rotary_cos_sin`
    picks the sequence-length-dependent ones at run time, as transformers does.
    """
    dim = int(head_dim * rope.partial_rotary_factor)
    kind = rope.rope_type
    if kind == "longrope":
        return _longrope(rope, dim, max_pos, rope.short_factor)
    if kind in ("default", "dynamic"):
        return _default_inv_freq(rope.theta, dim), 1.0
    if kind == "linear":
        return _default_inv_freq(rope.theta, dim) / rope.factor, 1.0
    if kind == "llama3":
        return _llama3(rope, dim), 1.0
    if kind == "yarn":
        return _yarn(rope, dim, max_pos)
    raise ValueError(
        f"rope_type={kind!r} is not supported; expected default, linear, dynamic, yarn, llama3 or longrope"
    )


def mrope_angles(positions: jax.Array, inv_freq: jax.Array, section: tuple[int, ...]) -> jax.Array:
    """M-RoPE rotation angles `[batch, seq, rot_dim // 2]` for positions `[3, batch, seq]`.

    The frequencies are cut into consecutive `section`s; section i turns with position row `i % 3`
    (temporal, height, width), as transformers' Qwen2-VL `recomposition_frequencies`.
    """
    if sum(section) != inv_freq.shape[0]:
        raise ValueError(f"mrope_section {list(section)} must sum to rot_dim // 2 = {inv_freq.shape[0]}")
    rows = np.repeat(np.arange(len(section)) % 3, section)  # [rot_dim // 2]: position row of each frequency
    per_freq = positions.astype(jnp.float32)[rows]  # [rot_dim // 2, batch, seq]
    return jnp.moveaxis(per_freq, 0, -1) * inv_freq


def rotary_cos_sin(
    positions: jax.Array, rope: RopeConfig, head_dim: int, max_pos: int
) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables `[batch, seq, rot_dim]` (float32) for integer `positions` `[batch, seq]`
    (or `[3, batch, seq]` with M-RoPE; `[batch, seq]` positions then serve all three rows)."""
    inv_freq, scale = rope_frequencies(rope, head_dim, max_pos)
    inv_freq = jnp.asarray(inv_freq)
    if rope.rope_type == "dynamic":
        # NTK-aware base growth once the longest position exceeds the trained length.
        dim = 2 * inv_freq.shape[0]
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_pos).astype(jnp.float32)
        base = rope.theta * ((rope.factor * seq_len / max_pos) - (rope.factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if rope.rope_type == "longrope":
        # transformers picks one factor set for the whole call from its longest position.
        dim = int(head_dim * rope.partial_rotary_factor)
        long_inv_freq, _ = _longrope(rope, dim, max_pos, rope.long_factor)
        original = rope.original_max_position_embeddings or max_pos
        inv_freq = jnp.where(jnp.max(positions) + 1 > original, jnp.asarray(long_inv_freq), inv_freq)
    if rope.mrope_section is not None:
        positions = jnp.broadcast_to(positions, (3, *positions.shape[-2:]))
        freqs = mrope_angles(positions, inv_freq, rope.mrope_section)  # [batch, seq, rot_dim // 2]
    else:
        freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, rot_dim // 2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [batch, seq, rot_dim]
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on `x` `[batch, seq, heads, head_dim]`; a partial rotary dim leaves the tail as is."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    half = rot_dim // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = x_rot * cos + rotated * sin
    return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
