"""Scanned decoder layers: runs of identical layers stored stacked (`[layers, ...]`) and run by one
`jax.lax.scan`, so a deep model compiles one layer body instead of every layer.

Layout. Layers are identical when their static attributes agree (sliding window, rotary settings,
dense MLP vs MoE: `layer_kind`). `layer_layout` cuts the stack into `Segment`s: `repeats` copies of a
pattern of `period` consecutive layers (llama: one segment, period 1; Gemma 2: local/global pairs,
period 2; Gemma 3: period 6 then a remainder; deepseek_v3: the dense layers, then the MoE layers).
Each segment is a `LayerStack` holding one `DecoderLayer` per pattern position whose every variable has
a leading `repeats` axis, logical name `layers` (never sharded). Layer `start + slot * period + k` lives
at `model.stacks.{segment}.layers.{k}`, slice `slot`; `layer_paths` names those per-layer paths
(`model.layers.{i}....`, the unrolled layout's), which the weight maps, PEFT files and quantized exports
use, so users see HF's per-layer tensors whatever the layout.

`stack_modules` / `unstack_module` convert between per-layer modules and one stacked module for any
variables (LoRA adapters, qwix-quantized kernels, dropout RNG streams included).
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.parallel.rules import constrain

from .config import ModelConfig
from .remat import checkpointed

LAYERS_AXIS = "layers"  # logical name of the stacking axis (replicated by every rule table)
MAX_PERIOD = 8  # longest repeating pattern looked for (Gemma 3's is 6)
ACTIVATION_AXES = ("batch", "seq", "embed_act")


class Segment(NamedTuple):
    """Layers `start .. start + period * repeats - 1`: `repeats` copies of a `period`-layer pattern."""

    start: int
    period: int
    repeats: int

    def layer_index(self, k: int, slot: int) -> int:
        """The model layer at pattern position `k` of copy `slot`."""
        return self.start + slot * self.period + k


def layer_kind(cfg: ModelConfig, i: int) -> tuple:
    """What makes layer `i` differ from another: its window, rotary settings and MLP kind."""
    window = cfg.layer_windows[i] if cfg.layer_windows else None
    sparse = cfg.moe is not None and i in cfg.moe.sparse_layers
    return window, cfg.layer_rope(i), sparse


def layer_layout(cfg: ModelConfig) -> tuple[Segment, ...]:
    """Cut the layers into segments of a repeated pattern, greedily covering the most layers per segment."""
    n = cfg.num_hidden_layers
    kinds = [layer_kind(cfg, i) for i in range(n)]
    segments, pos = [], 0
    while pos < n:
        best = (1, 1)  # (period, repeats)
        for period in range(1, min(MAX_PERIOD, n - pos) + 1):
            pattern = kinds[pos : pos + period]
            repeats = 1
            while kinds[pos + repeats * period : pos + (repeats + 1) * period] == pattern:
                repeats += 1
            if repeats > 1 and period * repeats > best[0] * best[1]:
                best = (period, repeats)
        segments.append(Segment(pos, *best))
        pos += best[0] * best[1]
    return tuple(segments)


_STACKED_PATH = re.compile(r"model\.stacks\.(\d+)\.layers\.(\d+)\.(.+)\Z")


def layer_paths(cfg: ModelConfig, path: str) -> list[str] | None:
    """The per-layer paths (`model.layers.{i}.<rest>`, slot 0 first) held by a stacked variable or module
    at `path`; None when `path` is not inside a layer stack."""
    m = _STACKED_PATH.match(path)
    if m is None:
        return None
    segment = layer_layout(cfg)[int(m.group(1))]
    k, rest = int(m.group(2)), m.group(3)
    return [f"model.layers.{segment.layer_index(k, s)}.{rest}" for s in range(segment.repeats)]


def stack_size(var: nnx.Variable) -> int | None:
    """The number of stacked layers of a variable (its leading `layers` axis), or None."""
    axes = var.get_metadata().get("logical_axes")
    if not axes or axes[0] != LAYERS_AXIS:
        return None
    return jax.tree.leaves(var.get_value())[0].shape[0]


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _stack_vars(*variables: nnx.Variable) -> nnx.Variable:
    value = jax.tree.map(lambda *xs: jnp.stack(xs), *(v.get_value() for v in variables))
    axes = variables[0].get_metadata().get("logical_axes")
    extra = {} if axes is None else {"logical_axes": (LAYERS_AXIS, *axes)}
    return variables[0].replace(value, **extra)


def _slice_var(var: nnx.Variable, slot: int) -> nnx.Variable:
    axes = var.get_metadata().get("logical_axes")
    extra = {} if axes is None else {"logical_axes": tuple(axes[1:])}
    return var.replace(jax.tree.map(lambda x: x[slot], var.get_value()), **extra)


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the same structure whose variables stack the modules' variables on a new axis 0."""
    graphdef, first = nnx.split(modules[0])
    states = [first]
    for m in modules[1:]:
        other, state = nnx.split(m)
        if other != graphdef:
            raise ValueError(f"cannot stack modules of different structure: {type(m).__name__} differs from the first")
        states.append(state)
    return nnx.merge(graphdef, jax.tree.map(_stack_vars, *states, is_leaf=_is_var))


def unstack_module(module: nnx.Module, count: int) -> list[nnx.Module]:
    """The `count` per-layer modules of a stacked module (copies of its slices)."""
    graphdef, state = nnx.split(module)
    return [nnx.merge(graphdef, jax.tree.map(lambda v: _slice_var(v, s), state, is_leaf=_is_var)) for s in range(count)]


class LayerStack(nnx.Module):
    """One segment: `layers[k]` is pattern position `k`, its variables stacked over the segment's copies."""

    def __init__(self, segment: Segment, make_layer: Callable[[int], nnx.Module]):
        self.start, self.period, self.repeats = segment
        self.layers = nnx.List(
            [stack_modules([make_layer(segment.layer_index(k, s)) for s in range(segment.repeats)]) for k in range(self.period)]
        )

    def __call__(self, x: jax.Array, rotary, segment_ids: jax.Array, remat: bool | str = False, bidirectional_ids=None):
        """`x` `[batch, seq, embed]` through every layer of the segment; `rotary` holds each model
        layer's `(cos, sin)`; `bidirectional_ids` as `DecoderModel`'s. Returns `(x, stats)`: the MoE layers'
        router statistics summed over copies."""
        tables = rotary[self.start : self.start + self.period]  # the same for every copy
        graphdef, rng_state, params = nnx.split(self.layers, nnx.RngState, ...)

        def body(x, xs):
            layers = nnx.merge(graphdef, *xs)
            stats = []
            for layer, (cos, sin) in zip(layers, tables):
                x = layer(x, cos, sin, segment_ids, bidirectional_ids=bidirectional_ids)
                if isinstance(x, tuple):  # an MoE layer: (x, RouterStats)
                    x, layer_stats = x
                    stats.append(layer_stats)
                x = constrain(x, ACTIVATION_AXES)
            return x, (nnx.state(layers, nnx.RngState), tuple(stats))

        body = checkpointed(body, remat, prevent_cse=False)
        x, (rng_state, stats) = jax.lax.scan(body, x, (rng_state, params))
        nnx.update(self.layers, rng_state)  # dropout streams advance as in the unrolled loop
        return x, [jax.tree.map(lambda s: jnp.sum(s, axis=0), layer_stats) for layer_stats in stats]

    def cached(self, x: jax.Array, rotary, segment_ids: jax.Array, keys, values, kv_segment_ids, index, *blocks):
        """The segment against its KV cache: `keys`/`values` hold per pattern position the stacked caches
        `[repeats, batch, max_len, kv_heads, head_dim]`; returns `(x, keys, values)` with this call's written.
        `blocks`: optionally the cache slots' `bidirectional_ids` `[batch, max_len]`.

        KV-cache calls are inference (generation, rollouts), run with dropout off (`tuners.lora.inference_view`):
        the RNG streams are read, never advanced, so a decode loop (`lax.while_loop`) mutates no outer state."""
        tables = rotary[self.start : self.start + self.period]
        graphdef, rng_state, params = nnx.split(self.layers, nnx.RngState, ...)

        def body(carry, xs):
            x, keys, values = carry
            slot, rng_state, params = xs
            layers = nnx.merge(graphdef, rng_state, params)
            keys, values = list(keys), list(values)
            for k, (layer, (cos, sin)) in enumerate(zip(layers, tables)):
                cache = (keys[k][slot], values[k][slot], kv_segment_ids, index, *blocks)
                x, (layer_keys, layer_values) = layer(x, cos, sin, segment_ids, cache)
                x = constrain(x, ACTIVATION_AXES)
                keys[k] = jax.lax.dynamic_update_index_in_dim(keys[k], layer_keys, slot, 0)
                values[k] = jax.lax.dynamic_update_index_in_dim(values[k], layer_values, slot, 0)
            return (x, tuple(keys), tuple(values)), None

        slots = jnp.arange(self.repeats, dtype=jnp.int32)
        (x, keys, values), _ = jax.lax.scan(body, (x, tuple(keys), tuple(values)), (slots, rng_state, params))
        return x, keys, values
