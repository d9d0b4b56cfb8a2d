"""Gradient checkpointing (rematerialisation) settings: `True`/`False` or a `jax.checkpoint_policies` name.

`DecoderModel.remat` (set by the trainer from `--gradient_checkpointing`) accepts any value of
`REMAT_CHOICES`; `remat_policy` turns it into what `jax.checkpoint` takes. The policy decides which
intermediate values of a decoder layer the backward pass keeps instead of recomputing:

- `True` / `nothing_saveable`: keep only the layer inputs, recompute everything (least memory);
- `dots_saveable`: keep every matmul output (recompute only elementwise work);
- `dots_with_no_batch_dims_saveable`: keep the matmuls without batch dimensions (the projections,
  not the attention score matmuls, whose outputs grow with seq^2);
- `offload_dot_with_no_batch_dims`: the same matmul outputs, moved to pinned host memory (meant for
  GPU/TPU; XLA:CPU compiles it, where host and device memory are the same).
"""

from __future__ import annotations

from typing import Callable

import jax

# name -> factory of the policy (a factory, because the offload policy takes its memory kinds)
REMAT_POLICIES: dict[str, Callable[[], Callable]] = {
    "nothing_saveable": lambda: jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": lambda: jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload_dot_with_no_batch_dims": lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        "device", "pinned_host"
    ),
}
_BOOL_NAMES = {"true": True, "false": False}
REMAT_CHOICES = (True, False, *sorted(REMAT_POLICIES))


def check_remat(value: bool | str) -> bool | str:
    """Validate a remat setting (bool, "true"/"false" or a policy name); returns it normalised."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL_NAMES:
        return _BOOL_NAMES[value.lower()]
    if isinstance(value, str) and value in REMAT_POLICIES:
        return value
    raise ValueError(
        f"gradient_checkpointing={value!r} is not a remat setting; expected true, false or one of "
        f"{', '.join(sorted(REMAT_POLICIES))}"
    )


def remat_policy(value: bool | str) -> Callable | None:
    """What `jax.checkpoint(fn, policy=...)` takes for a remat setting, or None for no remat at all.

    `True` means recompute everything (`nothing_saveable`); `False` means plain autodiff.
    Unknown names raise a ValueError listing the valid ones.
    """
    value = check_remat(value)
    if value is False:
        return None
    return REMAT_POLICIES["nothing_saveable" if value is True else value]()


def checkpointed(fn: Callable, value: bool | str, *, prevent_cse: bool = True) -> Callable:
    """`fn` under `jax.checkpoint` with the policy of `value`, or `fn` itself when remat is off.

    `prevent_cse=False` suits a `jax.lax.scan` body, where XLA cannot merge the recomputation anyway.
    """
    policy = remat_policy(value)
    return fn if policy is None else jax.checkpoint(fn, policy=policy, prevent_cse=prevent_cse)
