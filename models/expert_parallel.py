"""Expert parallelism: MoE dispatch that partitions, with `shard_map` and two all-to-alls over the `expert` axis.

With `--expert_parallel_size P` each device holds `E / P` experts (the stacked weights' `expert` axis) and
its own share of the tokens (the `batch` rule includes `expert`). `dispatch_all_to_all` runs, per device:

  route (outside, GSPMD) -> sort the local token copies by expert -> pack them into one block per expert
  shard -> all-to-all -> grouped matmuls of the local experts (`ffn`) -> all-to-all back -> unpack -> combine

so a device computes only its experts, on only the copies routed to them, and never holds another
shard's expert weights. The blocks are sized for the worst case (every copy to one shard: `tokens x top_k`
rows each), so no token is ever dropped and the result equals one device; the unused rows are zeros
that the grouped matmuls skip (rows past the group sizes). `ffn(rows, group_sizes, *expert_weights)` is the
one place that touches expert weights (LoRA on experts hooks in there).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from swift_jax.parallel.rules import logical_to_spec
from swift_jax.parallel.sequence import SEQUENCE_AXIS, sequence_shards

EXPERT_AXIS = "expert"


def _names(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def token_axes() -> tuple[str, ...]:
    """The mesh axes that split the flattened tokens `[batch * seq]`: the batch axes, then the sequence's."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = _names(logical_to_spec(("batch",), mesh)[0])
    return axes + ((SEQUENCE_AXIS,) if sequence_shards() > 1 else ())


def expert_shards(num_experts: int, num_tokens: int) -> int:
    """How many devices split the experts for this call: the `expert` axis size, or 1 when there is no
    such axis or the experts or tokens do not split evenly (then the GSPMD path runs)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get(EXPERT_AXIS, 1) == 1 or EXPERT_AXIS in mesh.manual_axes:
        return 1
    shards = mesh.shape[EXPERT_AXIS]
    devices = math.prod(mesh.shape[a] for a in token_axes())
    return shards if num_experts % shards == 0 and num_tokens % devices == 0 else 1


def _exchange(x: jax.Array) -> jax.Array:
    """`[shards, rows, ...]`: block i goes to expert shard i; returns the blocks received, by source shard."""
    return jax.lax.all_to_all(x, EXPERT_AXIS, split_axis=0, concat_axis=0, tiled=True)


def _local_dispatch(ffn: Callable, num_experts: int, x, experts, weights, *expert_weights):
    """One device's part: `x` `[T, embed]`, `experts`/`weights` `[T, k]` -> `[T, embed]`."""
    tokens, k = experts.shape
    shards = jax.lax.axis_size(EXPERT_AXIS)
    local = num_experts // shards  # experts per shard
    rows = tokens * k  # block size: every copy of this device might go to one shard
    flat = experts.reshape(-1)  # [rows]
    order = jnp.argsort(flat, stable=True)  # copies sorted by expert, hence by destination shard
    expert = flat[order]
    dest = expert // local  # [rows]
    sent = jnp.bincount(dest, length=shards)  # copies per destination
    slot = jnp.arange(rows) - (jnp.cumsum(sent) - sent)[dest]  # position inside the destination block
    blocks = jnp.zeros((shards, rows, x.shape[-1]), x.dtype).at[dest, slot].set(x[order // k])  # [shards, rows, e]
    ids = jnp.full((shards, rows), local, jnp.int32).at[dest, slot].set(expert % local)  # `local` = empty slot

    received, received_ids = _exchange(blocks).reshape(shards * rows, -1), _exchange(ids).reshape(-1)
    by_expert = jnp.argsort(received_ids, stable=True)  # local experts' rows contiguous, empty slots last
    sizes = jnp.bincount(received_ids, length=local).astype(jnp.int32)  # [local]; empty slots not counted
    out = ffn(received[by_expert], sizes, *expert_weights)  # [shards * rows, embed]
    out = jnp.zeros_like(out).at[by_expert].set(out).reshape(shards, rows, -1)

    returned = _exchange(out)[dest, slot]  # [rows, embed], sorted like `expert`
    mixed = jnp.zeros_like(returned).at[order].set(returned).reshape(tokens, k, -1)  # [T, k, embed]
    return jnp.einsum("tkd,tk->td", mixed, weights.astype(mixed.dtype))


def dispatch_all_to_all(
    ffn: Callable[..., jax.Array],
    x: jax.Array,
    experts: jax.Array,
    weights: jax.Array,
    expert_weights: Sequence[jax.Array],
) -> jax.Array:
    """Mixture output `[T, embed]` of tokens `x` `[T, embed]` routed to `experts` `[T, k]` with `weights`.

    `expert_weights` are stacked `[E, ...]` arrays (sharded over `expert`); `ffn(rows [R, embed],
    group_sizes [E / P], *local_weights) -> [R, embed]` applies the local experts to rows sorted by expert.
    Axes of the mesh other than the token and expert axes (tensor) stay with GSPMD inside.
    """
    num_experts = expert_weights[0].shape[0]
    tokens_spec = PartitionSpec(token_axes())  # [T, ...]
    weight_spec = PartitionSpec(EXPERT_AXIS)  # [E, ...]
    run = jax.shard_map(
        lambda *args: _local_dispatch(ffn, num_experts, *args),
        in_specs=(tokens_spec, tokens_spec, tokens_spec) + (weight_spec,) * len(expert_weights),
        out_specs=tokens_spec,
        axis_names={*token_axes(), EXPERT_AXIS},
    )
    return run(x, experts, weights, *expert_weights)
