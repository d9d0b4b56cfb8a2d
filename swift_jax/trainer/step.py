"""The jit-compiled train and eval steps over an NNX model split into trainable / frozen state.

The model is split once: `trainable` (what the optimizer sees: `nnx.LoRAParam` for LoRA, every
`nnx.Param` for full fine-tuning), `rng` (dropout streams) and `frozen` (everything else). A step merges
them, runs micro-batches under `lax.scan` (gradient accumulation), and returns the new trainable
state, optimizer state and RNG state; the frozen state is never copied or donated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .loss import chunked_cross_entropy


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed."""

    step: jax.Array
    params: Any  # nnx.State of the trainable variables
    opt_state: Any
    rng: Any  # nnx.State of the RNG streams (dropout)


def split_model(model: nnx.Module, trainable_filter) -> tuple[nnx.GraphDef, Any, Any, Any]:
    """(graphdef, trainable, rng, frozen) states of `model`."""
    return nnx.split(model, trainable_filter, nnx.RngState, ...)


def _micro_loss(graphdef, params, rng, frozen, batch, loss_chunk, aux_coef=0.0):
    # Fresh RNG variables at this trace level: dropout advances their counters inside the trace.
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rng), frozen)
    inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
    if aux_coef:  # MoE: + coef * router load-balancing loss, weighted by tokens like the mean CE
        hidden, aux = model.hidden_states(batch["input_ids"], **inputs, return_aux_loss=True)
    else:
        hidden = model.hidden_states(batch["input_ids"], **inputs)
    loss_sum, count, correct = chunked_cross_entropy(hidden, batch["labels"], model.logits, chunk_size=loss_chunk)
    if aux_coef:
        loss_sum = loss_sum + aux_coef * aux * count
    new_rng = nnx.state(model, nnx.RngState)
    return loss_sum, (count, correct, new_rng)


def router_aux_coef(config, override: float | None = None) -> float:
    """The weight of the MoE load-balancing loss: `override` if given, else the model config's
    `router_aux_loss_coef` when its `output_router_logits` is set (as transformers), else 0."""
    moe = getattr(config, "moe", None)
    if moe is None:
        return 0.0
    if override is not None:
        return float(override)
    return moe.router_aux_loss_coef if moe.output_router_logits else 0.0


def make_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *, loss_chunk: int = 512, router_aux_loss_coef: float = 0.0
):
    """A function `(state, frozen, batches) -> (state, metrics)`; batches are `[accum, batch, seq]` arrays.

    The loss is the mean over every target token of all micro-batches (sum of losses / token count), so
    accumulating 4 x batch 2 equals one batch of 8. For MoE models `router_aux_loss_coef` > 0 adds
    `coef * aux_loss` (transformers' load-balancing loss) to each micro-batch's mean loss.
    """
    grad_fn = jax.value_and_grad(functools.partial(_micro_loss, aux_coef=router_aux_loss_coef), argnums=1, has_aux=True)

    def train_step(state: TrainState, frozen, batches):
        def body(carry, batch):
            grads, loss, count, correct, rng = carry
            (loss_i, (count_i, correct_i, rng)), grads_i = grad_fn(graphdef, state.params, rng, frozen, batch, loss_chunk)
            grads = jax.tree.map(jnp.add, grads, grads_i)
            return (grads, loss + loss_i, count + count_i, correct + correct_i, rng), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), state.rng)
        (grads, loss, count, correct, rng), _ = jax.lax.scan(body, init, batches)
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        metrics = {"loss": loss / denom, "grad_norm": grad_norm, "num_targets": count, "token_acc": correct / denom}
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(graphdef: nnx.GraphDef, *, loss_chunk: int = 512):
    """A function `(params, rng, frozen, batch) -> (loss_sum, num_targets, num_correct)` (no dropout)."""

    def eval_step(params, rng, frozen, batch):
        model = nnx.merge(graphdef, params, rng, frozen)
        model.eval()
        hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
        return chunked_cross_entropy(hidden, batch["labels"], model.logits, chunk_size=loss_chunk)

    return jax.jit(eval_step)
