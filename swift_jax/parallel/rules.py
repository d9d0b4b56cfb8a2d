"""Logical axis names -> mesh axes: the one table that decides how parameters and activations shard."""

from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Each logical name maps to a mesh axis (or a tuple of them, or None = replicated). Mesh axes that the
# mesh does not have, or that have size 1, are dropped, so one table serves every mesh shape.
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp", "expert"),  # expert parallelism also splits the tokens (models/expert_parallel.py)
    "seq": "sequence",
    "vocab": "tensor",
    "embed": "fsdp",
    "embed_act": None,  # the residual stream's hidden dim: activations shard by batch, not by fsdp
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "expert": "expert",
    "lora_rank": None,
    "layers": None,  # the stacking axis of scanned layers (models/scan.py): scanned over, never sharded
}


def logical_to_spec(
    axes: Sequence[str | None], mesh: Mesh, rules: dict[str, str | tuple[str, ...] | None] | None = None
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry the logical names `axes`.

    A mesh axis is used at most once per array (the first dimension that asks for it wins).
    """
    rules = current_rules() if rules is None else rules
    used: set[str] = set()
    spec = []
    for name in axes:
        target = rules.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        keep = tuple(n for n in names if n in mesh.shape and mesh.shape[n] > 1 and n not in used)
        used.update(keep)
        spec.append(None if not keep else keep[0] if len(keep) == 1 else keep)
    return PartitionSpec(*spec)


def devices_for(logical: str, mesh: Mesh) -> int:
    """How many devices split a dimension named `logical` on `mesh` (e.g. the rows of a batch)."""
    entry = logical_to_spec((logical,), mesh)[0]
    names = () if entry is None else (entry,) if isinstance(entry, str) else entry
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def param_sharding(
    axes: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: dict[str, str | tuple[str, ...] | None] | None = None,
) -> NamedSharding:
    """NamedSharding for one parameter; dimensions that do not divide evenly stay replicated."""
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    spec = list(logical_to_spec(axes, mesh, rules))
    for dim, entry in enumerate(spec):
        if entry is None:
            continue
        names = (entry,) if isinstance(entry, str) else entry
        size = 1
        for n in names:
            size *= mesh.shape[n]
        if shape[dim] % size:
            spec[dim] = None
    return NamedSharding(mesh, PartitionSpec(*spec))


_ACTIVE_RULES: list[dict] = [DEFAULT_RULES]


class logical_rules:
    """Context manager that overrides the rule table for activations (and `current_rules()`)."""

    def __init__(self, rules: dict[str, str | tuple[str, ...] | None]):
        self.rules = {**DEFAULT_RULES, **rules}

    def __enter__(self):
        _ACTIVE_RULES.append(self.rules)
        return self.rules

    def __exit__(self, *exc):
        _ACTIVE_RULES.pop()


def current_rules() -> dict[str, str | tuple[str, ...] | None]:
    return _ACTIVE_RULES[-1]


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical names, under the mesh set with `jax.set_mesh`.

    A no-op outside a mesh context, so models run unchanged on one device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh, current_rules()))
