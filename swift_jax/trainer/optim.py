"""AdamW with warmup and a decay schedule, as ms-swift (transformers' Trainer) configures it."""

from __future__ import annotations

import math
from typing import Any, Callable

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


def path_name(path) -> str:
    """A pytree path of an nnx.State as our dotted variable name (`model.stacks.0.layers.mlp.up_proj.lora_b`)."""
    return ".".join(str(k.key) for k in path if hasattr(k, "key"))


def scale_by_path(factor: Callable[[str], Any]) -> optax.GradientTransformation:
    """Multiply each leaf by `factor(dotted name)` (a number or a broadcastable array; None leaves it as is).
    Stateless: a per-parameter learning-rate multiple after AdamW, or a 0/1 mask of frozen slices."""
    import jax

    def update(updates, state, params=None):
        def apply(path, u):
            f = factor(path_name(path))
            return u if f is None else u * jax.numpy.asarray(f, u.dtype)

        return jax.tree_util.tree_map_with_path(apply, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def is_lora_plus_b(name: str) -> bool:
    """LoRA+'s fast group (PEFT's create_loraplus_optimizer: lora_B and the 1-D parameters: DoRA magnitudes,
    biases, norm scales)."""
    last = name.rsplit(".", 1)[-1]
    return last in ("lora_b", "magnitude", "bias") or "norm" in name


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    adam_beta1: float,
    adam_beta2: float,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float | None,
    lorap_lr_ratio: float | None = None,
    masks: dict[str, Any] | None = None,
    lr_factors: Callable[[str], Any] | None = None,
) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW (decoupled weight decay on weights, not biases or norms).

    `lorap_lr_ratio` (LoRA+): LoRA+'s B group takes `ratio x` the learning rate, i.e. its whole AdamW update
    (step and decoupled decay both scale with the rate) is multiplied by the ratio. `masks` (dotted name ->
    0/1 array over stacked axes, tuners/select.py) zero the gradients of frozen slices before clipping and
    their updates after AdamW (weight decay included), so those slices stay bit-identical. `lr_factors`
    (dotted name -> multiple or None) scales whole AdamW updates like a per-group learning rate (`--vit_lr`).
    """
    parts = []
    mask = (lambda name: masks.get(name)) if masks else None
    if mask:
        parts.append(scale_by_path(mask))
    if max_grad_norm and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon, weight_decay=weight_decay, mask=decay_mask))
    if lorap_lr_ratio:
        parts.append(scale_by_path(lambda name: lorap_lr_ratio if is_lora_plus_b(name) else None))
    if lr_factors:
        parts.append(scale_by_path(lr_factors))
    if mask:
        parts.append(scale_by_path(mask))
    return optax.chain(*parts)
