"""Sparse Mixture-of-Experts feed-forward block (mixtral, qwen3_moe, deepseek_v3), used by `DecoderLayer`
when `ModelConfig.moe` lists the layer in `sparse_layers`.

A router scores every token against every expert, keeps the top-k and mixes those experts' gated MLPs
with the (optionally renormalised) routing probabilities. Two routers: `route` (softmax, top-k) and
`route_grouped` (deepseek_v3: sigmoid scores, a non-trained selection bias, group-limited top-k, scaled
weights); deepseek_v3 also adds a dense `shared_experts` MLP on every token. The experts run as grouped matmuls
(`jax.lax.ragged_dot`) on the token copies sorted by expert, so compute is `tokens x top_k`, not
`tokens x num_experts`; `experts_dense` is the plain reference the tests compare it with.

Expert weights are stacked `[expert, in, out]` and carry the logical axis `expert`, which
`swift_jax.parallel` maps to the `expert` mesh axis (`--expert_parallel_size`). They are plain
parameters, not `Linear` layers, so LoRA `all-linear` leaves them (and the router) frozen;
`--target_parameters` (swift_jax/tuners/experts.py) attaches per-expert LoRA (`Experts.lora`), which the
grouped matmuls apply as `LowRank` updates per expert group, and QLoRA may store them quantized
(`Experts.weight` dequantizes).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig
from .expert_parallel import dispatch_all_to_all, expert_shards
from .layers import MLP, Buffer, activation

# Per-layer load-balancing statistics: (selections per expert [E], summed probabilities [E], rows []),
# all float32 and counted over unmasked tokens only; summed over layers before the loss.
RouterStats = tuple[jax.Array, jax.Array, jax.Array]


def route(logits: jax.Array, top_k: int, norm_topk_prob: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax over experts, then top-k: `(probs [T, E] f32, weights [T, k] f32, experts [T, k] int32)`.

    Mixtral always renormalises the k weights to sum to 1; qwen3_moe only with `norm_topk_prob`.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts.astype(jnp.int32)


def route_grouped(
    logits: jax.Array,
    bias: jax.Array,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    scaling: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """deepseek_v3's router: `(scores [T, E] f32, weights [T, k] f32, experts [T, k] int32)`.

    Scores are `sigmoid(logits)`. Selection uses `scores + bias` (`e_score_correction_bias` `[E]`):
    the experts split into `n_group` contiguous groups, a group scores the sum of its two best
    experts, only the best `topk_group` groups stay eligible, and the top-k eligible experts win.
    Their weights are the uncorrected scores, renormalised with `norm_topk_prob` (+1e-20, as HF) and
    times `scaling` (routed_scaling_factor).
    """
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))  # [T, E]
    tokens, num_experts = scores.shape
    choice = scores + bias.astype(jnp.float32)
    grouped = choice.reshape(tokens, n_group, num_experts // n_group)  # [T, G, E / G]
    group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [T, G]
    _, groups = jax.lax.top_k(group_scores, topk_group)  # [T, topk_group]
    keep = jnp.any(jax.nn.one_hot(groups, n_group, dtype=jnp.bool_), axis=1)  # [T, G]
    keep = jnp.repeat(keep, num_experts // n_group, axis=-1)  # [T, E]
    _, experts = jax.lax.top_k(jnp.where(keep, choice, -jnp.inf), top_k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)  # [T, k]
    if norm_topk_prob:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    return scores, weights * scaling, experts.astype(jnp.int32)


class LowRank(NamedTuple):
    """A per-expert low-rank update `scale * a[e] @ b[e]` of a stacked expert weight (LoRA on experts):
    a `[E, in, rank]`, b `[E, rank, out]`."""

    a: jax.Array
    b: jax.Array
    scale: float

    def dense(self) -> jax.Array:
        """The update as a dense `[E, in, out]` stack (reference path and merging)."""
        return self.scale * jnp.einsum("eir,ero->eio", self.a, self.b)


Updates = Mapping[str, LowRank]  # "gate" / "up" / "down" -> the update of that weight


def grouped_matmul(xs: jax.Array, w: jax.Array, sizes: jax.Array, update: LowRank | None = None) -> jax.Array:
    """`xs` `[rows, in]` (rows sorted by expert, `sizes` `[E]` per expert) times each row's expert weight
    `w` `[E, in, out]`; with `update`, plus `scale * (xs @ a[e]) @ b[e]` as two rank-sized grouped matmuls,
    so LoRA costs `rows x rank` extra work and never forms `w + a b`."""
    y = jax.lax.ragged_dot(xs, w, sizes)  # [rows, out]
    if update is not None:
        low = jax.lax.ragged_dot(xs, update.a, sizes)  # [rows, rank]
        y = y + jax.lax.ragged_dot(low, update.b, sizes) * jnp.asarray(update.scale, y.dtype)
    return y


def experts_ragged(
    x: jax.Array,
    experts: jax.Array,
    weights: jax.Array,
    gate: jax.Array,
    up: jax.Array,
    down: jax.Array,
    act: Callable[[jax.Array], jax.Array],
    updates: Updates | None = None,
) -> jax.Array:
    """Mixture output `[T, embed]` for tokens `x` `[T, embed]` routed to `experts` `[T, k]`.

    The `T * k` token copies are sorted by expert, so each expert's rows are contiguous, and three
    grouped matmuls (`ragged_dot` with per-expert group sizes) apply gate `[E, embed, mlp]`, up
    `[E, embed, mlp]` and down `[E, mlp, embed]` (each plus its LoRA `updates`, if any); the results
    are unsorted and mixed with `weights`.
    """
    tokens, k = experts.shape
    num_experts = gate.shape[0]
    flat = experts.reshape(-1)  # [T * k]
    order = jnp.argsort(flat, stable=True)  # copies sorted by expert
    xs = jnp.take(x, order // k, axis=0)  # [T * k, embed]
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)  # [E]
    out = grouped_ffn(xs, sizes, gate, up, down, act=act, updates=updates)  # [T * k, embed], sorted order
    out = jnp.take(out, jnp.argsort(order), axis=0).reshape(tokens, k, -1)  # [T, k, embed]
    return jnp.einsum("tkd,tk->td", out, weights.astype(out.dtype))


def experts_dense(
    x: jax.Array,
    experts: jax.Array,
    weights: jax.Array,
    gate: jax.Array,
    up: jax.Array,
    down: jax.Array,
    act: Callable[[jax.Array], jax.Array],
    updates: Updates | None = None,
) -> jax.Array:
    """Reference for `experts_ragged`: every expert on every token, mixed by a `[T, E]` combine matrix
    (LoRA `updates` folded into dense weights)."""
    updates = updates or {}
    gate, up, down = (w + updates[n].dense().astype(w.dtype) if n in updates else w
                      for n, w in (("gate", gate), ("up", up), ("down", down)))
    num_experts = gate.shape[0]
    combine = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=x.dtype) * weights[..., None].astype(x.dtype), axis=1)
    h = act(jnp.einsum("td,edm->etm", x, gate)) * jnp.einsum("td,edm->etm", x, up)  # [E, T, mlp]
    out = jnp.einsum("etm,emd->etd", h, down)  # [E, T, embed]
    return jnp.einsum("etd,te->td", out, combine)


EXPERT_IMPLS = {"ragged": experts_ragged, "dense": experts_dense}


def grouped_ffn(
    rows: jax.Array,
    sizes: jax.Array,
    gate: jax.Array,
    up: jax.Array,
    down: jax.Array,
    *,
    act: Callable,
    updates: Updates | None = None,
) -> jax.Array:
    """The experts' gated MLPs on `rows` `[R, embed]` sorted by expert (`sizes` `[E]` rows each; rows past
    `sum(sizes)` come out zero): three grouped matmuls with gate/up `[E, embed, mlp]`, down `[E, mlp, embed]`,
    each plus its LoRA update from `updates` (`grouped_matmul`). `experts_ragged` runs it on every expert,
    the expert-parallel dispatch on each device's own experts."""
    updates = updates or {}
    mm = lambda t, w, name: grouped_matmul(t, w, sizes, updates.get(name))  # noqa: E731
    h = act(mm(rows, gate, "gate")) * mm(rows, up, "up")  # [R, mlp]
    return mm(h, down, "down")  # [R, embed]


def router_stats(probs: jax.Array, experts: jax.Array, mask: jax.Array) -> RouterStats:
    """One layer's load-balancing statistics over the tokens where `mask` `[T]` is true."""
    m = mask.astype(jnp.float32)
    counts = jnp.sum(jax.nn.one_hot(experts, probs.shape[-1], dtype=jnp.float32) * m[:, None, None], axis=(0, 1))
    return counts, jnp.sum(probs * m[:, None], axis=0), jnp.sum(m)


def load_balancing_loss(stats: Sequence[RouterStats], num_experts: int) -> jax.Array:
    """Switch-Transformer auxiliary loss, as transformers' `load_balancing_loss_func` computes it.

    Statistics of all MoE layers are pooled (as HF concatenates their router logits):
    `num_experts * sum_e (selections_e / rows) * (mean probability_e)`; masked (padding) tokens do not count.
    """
    counts = sum(s[0] for s in stats)
    prob_sum = sum(s[1] for s in stats)
    rows = jnp.maximum(sum(s[2] for s in stats), 1.0)
    return num_experts * jnp.sum((counts / rows) * (prob_sum / rows))


class Router(nnx.Module):
    """Router logits `x @ kernel`, kernel `[embed, experts]` (HF's `gate.weight` is its transpose).

    With `correction_bias` (deepseek_v3) it also holds `e_score_correction_bias` `[experts]`, a `Buffer`:
    loaded and saved with the checkpoint, never trained (DeepSeek updates it outside the gradient).
    """

    def __init__(
        self,
        features: int,
        num_experts: int,
        *,
        dtype,
        param_dtype,
        init_std: float,
        rngs: nnx.Rngs,
        correction_bias: bool = False,
    ):
        self.dtype = dtype
        init = jax.nn.initializers.normal(init_std)
        self.kernel = nnx.Param(init(rngs.params(), (features, num_experts), param_dtype), logical_axes=("embed", None))
        if correction_bias:  # float32 like HF (_keep_in_fp32_modules_strict)
            self.e_score_correction_bias = Buffer(jnp.zeros((num_experts,), jnp.float32), logical_axes=(None,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)


class Experts(nnx.Module):
    """Stacked expert weights: gate/up `[expert, embed, mlp]`, down `[expert, mlp, embed]`.

    `lora` is None or an adapter (swift_jax.tuners.experts) whose `updates(dtype)` gives the `LowRank`
    updates of the grouped matmuls."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, d, m = cfg.moe.num_experts, cfg.hidden_size, cfg.moe.intermediate_size
        init = jax.nn.initializers.normal(cfg.initializer_range)
        p = cfg.params_dtype
        self.gate_proj = nnx.Param(init(rngs.params(), (e, d, m), p), logical_axes=("expert", "embed", "mlp"))
        self.up_proj = nnx.Param(init(rngs.params(), (e, d, m), p), logical_axes=("expert", "embed", "mlp"))
        self.down_proj = nnx.Param(init(rngs.params(), (e, m, d), p), logical_axes=("expert", "mlp", "embed"))
        self.lora = nnx.data(None)

    def weight(self, name: str, dtype) -> jax.Array:
        """The stacked weight `name` in `dtype`, dequantized when QLoRA stores it quantized (a qwix QArray)."""
        value = getattr(self, name).get_value()
        if not isinstance(value, jax.Array):
            import qwix  # imported only when used

            value = qwix.dequantize(value)
        return value.astype(dtype)

    def updates(self, dtype) -> Updates:
        """The LoRA updates of gate / up / down (empty without an adapter)."""
        return {} if self.lora is None else self.lora.updates(dtype)


class SparseMoE(nnx.Module):
    """Router + experts (+ shared experts): `(x [b, s, embed], mask [b, s]) -> (y [b, s, embed], RouterStats)`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        moe = cfg.moe
        self.moe = moe
        self.top_k, self.norm_topk_prob = moe.top_k, moe.norm_topk_prob
        if moe.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"moe scoring {moe.scoring!r}: expected 'softmax' or 'sigmoid'")
        if moe.num_experts % moe.n_group:
            raise ValueError(f"moe: {moe.num_experts} experts do not split into n_group={moe.n_group} groups")
        if moe.impl not in EXPERT_IMPLS:
            raise ValueError(f"moe impl {moe.impl!r}: expected one of {sorted(EXPERT_IMPLS)}")
        self.impl = moe.impl
        self.dtype = cfg.compute_dtype
        self.act = activation(cfg.hidden_act)
        self.gate = Router(
            cfg.hidden_size,
            moe.num_experts,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            init_std=cfg.initializer_range,
            rngs=rngs,
            correction_bias=moe.score_correction_bias,
        )
        self.experts = Experts(cfg, rngs=rngs)
        shared = moe.shared_intermediate_size
        self.shared_experts = MLP(cfg, intermediate_size=shared, rngs=rngs) if shared else None

    def _route(self, flat: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(probabilities or scores [T, E], weights [T, k], experts [T, k])` for tokens `[T, embed]`."""
        moe = self.moe
        if moe.scoring == "softmax":
            return route(self.gate(flat), self.top_k, self.norm_topk_prob)
        # deepseek_v3 keeps the router in float32 (HF: _keep_in_fp32_modules_strict)
        logits = flat.astype(jnp.float32) @ self.gate.kernel[...].astype(jnp.float32)
        bias = self.gate.e_score_correction_bias[...] if moe.score_correction_bias else jnp.zeros(logits.shape[-1])
        return route_grouped(
            logits, bias, self.top_k, moe.n_group, moe.topk_group, self.norm_topk_prob, moe.routed_scaling_factor
        )

    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, RouterStats]:
        batch, seq, embed = x.shape
        flat = x.reshape(batch * seq, embed).astype(self.dtype)  # [T, embed]
        with jax.named_scope("router"):
            probs, weights, experts = self._route(flat)
        w = self.experts
        if self.impl == "ragged" and expert_shards(self.moe.num_experts, flat.shape[0]) > 1:
            with jax.named_scope("experts"):  # expert parallelism: all-to-all to the experts' devices
                updates = w.updates(self.dtype)
                y = dispatch_all_to_all(self._local_ffn(updates), flat, experts, weights, self._expert_arrays(w, updates))
            return self._finish(x, y, probs, experts, mask)
        with jax.named_scope("experts"):
            y = EXPERT_IMPLS[self.impl](
                flat,
                experts,
                weights,
                w.weight("gate_proj", self.dtype),
                w.weight("up_proj", self.dtype),
                w.weight("down_proj", self.dtype),
                self.act,
                w.updates(self.dtype),
            )
        return self._finish(x, y, probs, experts, mask)

    def _expert_arrays(self, w: Experts, updates: Updates) -> list[jax.Array]:
        """The stacked `[E, ...]` arrays the expert-parallel dispatch shards over `expert`: gate, up, down
        (dequantized under QLoRA), then each LoRA update's a and b."""
        stacked = [w.weight(f"{name}_proj", self.dtype) for name in ("gate", "up", "down")]
        return stacked + [t for name in ("gate", "up", "down") if name in updates for t in updates[name][:2]]

    def _local_ffn(self, updates: Updates) -> Callable[..., jax.Array]:
        """`grouped_ffn` over one device's experts, rebuilding the LoRA updates from the local a/b shards
        that follow gate/up/down in `_expert_arrays`."""
        adapted = [name for name in ("gate", "up", "down") if name in updates]

        def ffn(rows, sizes, gate, up, down, *low_rank):
            local = {name: LowRank(low_rank[2 * i], low_rank[2 * i + 1], updates[name].scale)
                     for i, name in enumerate(adapted)}
            return grouped_ffn(rows, sizes, gate, up, down, act=self.act, updates=local)

        return ffn

    def _finish(self, x, y, probs, experts, mask) -> tuple[jax.Array, RouterStats]:
        """The routed experts' output `y` `[T, embed]` as `[b, s, embed]`, plus the shared experts, and the stats."""
        y = y.reshape(x.shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y, router_stats(probs, experts, mask.reshape(-1))


def is_sparse_layer(cfg: ModelConfig, layer_idx: int) -> bool:
    """Whether layer `layer_idx` uses the MoE block (else the dense MLP)."""
    return cfg.moe is not None and layer_idx in cfg.moe.sparse_layers
