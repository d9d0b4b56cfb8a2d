"""Sequence (context) parallelism: the sequence of each packed row sharded over the `sequence` mesh axis.

With `--sequence_parallel_size N` every activation `[batch, seq, ...]` holds `seq / N` positions per device
(the `seq` rule of `rules.py`), so everything position-wise (projections, MLPs, norms, rotary embeddings
from the batch's own `positions`, the loss) runs on local positions under GSPMD. Attention is the one
operation that mixes positions; `sequence_parallel_attention` runs it under `shard_map`: each device
all-gathers the keys, values and key segment ids of the row and attends with its own queries, placed at
key index `shard * seq / N` (`q_offset`), so causality, packed segments, sliding windows and soft caps are
exactly those of the unsharded row.

Why all-gathered keys/values rather than a ring: with grouped-query attention the keys and values are
`kv_heads / heads` the size of the queries (1/7 for Qwen2.5-7B), so gathering them costs one collective
that XLA overlaps with the projections, and its transpose (a reduce-scatter of their gradients) comes
from autodiff. A ring would pass the same bytes in N steps, and needs an online-softmax merge with a
hand-written backward. The scores are `[batch, heads, seq / N, seq]` per device: N times less than one
device holding the row.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from jax.sharding import PartitionSpec

from .rules import logical_to_spec

SEQUENCE_AXIS = "sequence"


def sequence_shards() -> int:
    """How many devices share each row's sequence under the current mesh (`jax.set_mesh`); 1 without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SEQUENCE_AXIS not in mesh.shape or SEQUENCE_AXIS in mesh.manual_axes:
        return 1
    return mesh.shape[SEQUENCE_AXIS]


def sequence_parallel_attention(
    attend: Callable[..., jax.Array],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array,
    **options,
) -> jax.Array:
    """Self-attention of sequence-sharded `q` `[batch, seq, heads, head_dim]` against the whole row.

    `attend` is the attention function (same arguments as `kernels.attention`), run per device on its
    `seq / N` queries with `q_offset`. Rows and heads stay split as the activation rules split them
    (`batch`, `heads`), so each device attends only its own rows and heads. `seq` must be a multiple of N.
    """
    shards = sequence_shards()
    seq = q.shape[1]
    if seq % shards:
        raise ValueError(
            f"sequence length {seq} does not split over --sequence_parallel_size {shards}; "
            f"pad rows to a multiple of {shards} (--max_length)"
        )
    rows, heads = _split_axes("batch", q.shape[0]), _split_axes("heads", q.shape[2], k.shape[2])
    spec = PartitionSpec(rows, SEQUENCE_AXIS, heads)  # [batch, seq, heads, head_dim]
    ids_spec = PartitionSpec(rows, SEQUENCE_AXIS)  # [batch, seq]
    manual = {SEQUENCE_AXIS, *_names(rows), *_names(heads)}

    def local(q, k, v, q_segment_ids):
        gather = lambda x: jax.lax.all_gather(x, SEQUENCE_AXIS, axis=1, tiled=True)  # [batch, seq, ...]
        offset = jax.lax.axis_index(SEQUENCE_AXIS) * q.shape[1]  # key index of this device's first query
        return attend(
            q, gather(k), gather(v), segment_ids=gather(q_segment_ids), q_segment_ids=q_segment_ids,
            q_offset=offset, **options,
        )

    run = jax.shard_map(local, in_specs=(spec, spec, spec, ids_spec), out_specs=spec, axis_names=manual)
    return run(q, k, v, segment_ids)


def _names(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _split_axes(logical: str, *sizes: int):
    """The mesh axes the rules give `logical` under the current mesh, or None when they do not divide all `sizes`."""
    mesh = jax.sharding.get_abstract_mesh()
    entry = logical_to_spec((logical,), mesh)[0]
    devices = math.prod(mesh.shape[n] for n in _names(entry))
    return entry if all(size % devices == 0 for size in sizes) else None
