"""AdamW with warmup and a decay schedule, as ms-swift (transformers' Trainer) configures it."""

from __future__ import annotations

import math

import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(kind: str, learning_rate: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then `kind` decay to 0 at `total_steps` (constant stays at the peak).

    Matches transformers' get_{cosine,linear,constant}_schedule_with_warmup, which evaluate the schedule at
    the number of optimizer steps already taken.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type={kind!r}; expected one of {SCHEDULES}")
    decay_steps = max(1, total_steps - warmup_steps)

    def schedule(step):
        import jax.numpy as jnp

        step = jnp.asarray(step, jnp.float32)
        warm = step / max(1, warmup_steps)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        if kind == "cosine":
            decay = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        elif kind == "linear":
            decay = 1.0 - progress
        else:
            decay = jnp.ones_like(progress)
        return learning_rate * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def decay_mask(params):
    """True for parameters that get weight decay: not biases and not norm scales (as transformers' Trainer)."""
    import jax

    def decays(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return not any(n == "bias" or n.endswith("norm") or n == "scale" for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    adam_beta1: float,
    adam_beta2: float,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float | None,
) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW (decoupled weight decay on weights, not biases or norms)."""
    parts = []
    if max_grad_norm and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)
