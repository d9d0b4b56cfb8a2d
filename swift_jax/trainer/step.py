"""The jit-compiled train and eval steps over an NNX model split into trainable / frozen state.

The model is split once: `trainable` (what the optimizer sees: `nnx.LoRAParam` for LoRA, every
`nnx.Param` for full fine-tuning), `rng` (dropout streams) and `frozen` (everything else). A step merges
them, runs the method's loss on each micro-batch under `lax.scan` (gradient accumulation), and returns the
new trainable state, optimizer state and RNG state; the frozen state is never copied or donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .method import LossOutput, Method


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed."""

    step: jax.Array
    params: Any  # nnx.State of the trainable variables
    opt_state: Any
    rng: Any  # nnx.State of the RNG streams (dropout)
    carry: Any = None  # the method's state across micro-batches and steps (`Method.init_carry`)


def split_model(model: nnx.Module, trainable_filter) -> tuple[nnx.GraphDef, Any, Any, Any]:
    """(graphdef, trainable, rng, frozen) states of `model`."""
    return nnx.split(model, trainable_filter, nnx.RngState, ...)


def router_aux_coef(config, override: float | None = None) -> float:
    """The weight of the MoE load-balancing loss: `override` if given, else the model config's
    `router_aux_loss_coef` when its `output_router_logits` is set (as transformers), else 0."""
    moe = getattr(config, "moe", None)
    if moe is None:
        return 0.0
    if override is not None:
        return float(override)
    return moe.router_aux_loss_coef if moe.output_router_logits else 0.0


def _add(a: LossOutput, b: LossOutput) -> LossOutput:
    return jax.tree.map(jnp.add, a, b)


def _zeros_like(tree):
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)


def summarize(total: LossOutput, method: Method | None = None) -> dict[str, jax.Array]:
    """`loss` and each metric as sum / count over everything accumulated in `total`, plus the method's
    `derived_metrics` of them."""
    out = {"loss": total.loss_sum / jnp.maximum(total.count, 1)}
    for name, (value, count) in total.metrics.items():
        out[name] = value / jnp.maximum(count, 1)
    if method is not None:
        out.update(method.derived_metrics(total.metrics))
    return out


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, method: Method):
    """A function `(state, frozen, extra, batches) -> (state, metrics)`; batches are `[accum, rows, ...]`.

    The loss is the method's summed loss over all micro-batches divided by their summed count (target tokens
    for SFT, pairs for DPO), so accumulating 4 x batch 2 equals one batch of 8; metrics are aggregated the
    same way. `metrics` holds `loss`, the method's metrics, `grad_norm` and `count`.
    """

    def micro_loss(params, rng, frozen, extra, carry, batch):
        # Fresh RNG variables at this trace level: dropout advances their counters inside the trace.
        model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rng), frozen)
        out, carry = method.loss_with_carry(model, batch, extra, carry)
        return out.loss_sum, (out, nnx.state(model, nnx.RngState), jax.lax.stop_gradient(carry))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, frozen, extra, batches):
        first = jax.tree.map(lambda x: x[0], batches)
        out_shape = jax.eval_shape(lambda: micro_loss(state.params, state.rng, frozen, extra, state.carry, first)[1][0])

        def body(carry, batch):
            grads, total, rng, method_carry = carry
            (_, (out, rng, method_carry)), grads_i = grad_fn(state.params, rng, frozen, extra, method_carry, batch)
            return (jax.tree.map(jnp.add, grads, grads_i), _add(total, out), rng, method_carry), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        start = (zeros, _zeros_like(out_shape), state.rng, state.carry)
        (grads, total, rng, method_carry), _ = jax.lax.scan(body, start, batches)
        denom = jnp.maximum(total.count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**summarize(total, method), "grad_norm": optax.tree.norm(grads), "count": total.count}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng, carry=method_carry), metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(graphdef: nnx.GraphDef, method: Method):
    """A function `(params, rng, frozen, extra, carry, batch) -> (LossOutput, carry)` of one batch in eval mode
    (no dropout); the caller sums the outputs over batches and reports `summarize(total, method)`."""

    def eval_step(params, rng, frozen, extra, carry, batch):
        model = nnx.merge(graphdef, params, rng, frozen)
        model.eval()
        return method.loss_with_carry(model, batch, extra, carry)

    return jax.jit(eval_step)
