"""The optimizer (`--optim`: transformers' names mapped to optax) and the learning-rate schedule
(`--lr_scheduler_type`, `--lr_scheduler_kwargs`), as ms-swift (transformers' Trainer) configures them."""

from __future__ import annotations

import math
from typing import Any, Callable

import optax

SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "cosine_with_restarts")
# lr_scheduler_kwargs each schedule reads (transformers' get_scheduler keyword arguments)
SCHEDULE_KWARGS = {"cosine": {"num_cycles"}, "cosine_with_restarts": {"num_cycles"},
                   "cosine_with_min_lr": {"num_cycles", "min_lr", "min_lr_rate"}}


def learning_rate_schedule(kind: str, learning_rate: float, total_steps: int, warmup_steps: int,
                           kwargs: dict | None = None) -> optax.Schedule:
    """transformers' `get_scheduler(kind, ...)` as a function of the optimizer steps already taken: linear warmup
    from 0 over `warmup_steps`, then `kind` (constant: no warmup at all, as transformers' get_constant_schedule).

    `kwargs` are `--lr_scheduler_kwargs`: `num_cycles` (cosine: 0.5 = one half-wave; cosine_with_restarts: 1),
    `min_lr` or `min_lr_rate` (cosine_with_min_lr, required: the cosine decays to that floor).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type={kind!r}; expected one of {SCHEDULES}")
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - SCHEDULE_KWARGS.get(kind, set()))
    if unknown:
        raise ValueError(f"--lr_scheduler_kwargs {unknown} does not apply to --lr_scheduler_type {kind} "
                         f"(it reads {sorted(SCHEDULE_KWARGS.get(kind, ())) or 'none'})")
    floor = 0.0
    if kind == "cosine_with_min_lr":
        if ("min_lr" in kwargs) == ("min_lr_rate" in kwargs):
            raise ValueError('--lr_scheduler_type cosine_with_min_lr needs exactly one of min_lr or min_lr_rate in '
                             '--lr_scheduler_kwargs, e.g. \'{"min_lr": 1e-6}\'')
        floor = float(kwargs["min_lr"]) / learning_rate if "min_lr" in kwargs else float(kwargs["min_lr_rate"])
    cycles = float(kwargs.get("num_cycles", 1.0 if kind == "cosine_with_restarts" else 0.5))
    warmup = 0 if kind == "constant" else warmup_steps
    decay_steps = max(1, total_steps - warmup)

    def schedule(step):
        import jax.numpy as jnp

        step = jnp.asarray(step, jnp.float32)
        warm = step / max(1, warmup)
        progress = (step - warmup) / decay_steps
        if kind == "cosine_with_restarts":
            wave = jnp.where(progress >= 1.0, 0.0, 0.5 * (1.0 + jnp.cos(math.pi * ((cycles * progress) % 1.0))))
        elif kind.startswith("cosine"):
            wave = 0.5 * (1.0 + jnp.cos(math.pi * cycles * 2.0 * progress))
        if kind.startswith("cosine"):
            decay = jnp.maximum(0.0, wave * (1.0 - floor) + floor)
        elif kind == "linear":
            decay = jnp.maximum(0.0, 1.0 - progress)
        else:
            decay = jnp.ones_like(progress)
        return learning_rate * jnp.where(step < warmup, warm, decay)

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


# --optim: transformers' names -> the optax rule that does the same arithmetic. Fused / XLA / NPU kernels are a
# PyTorch implementation detail; low-bit and paged states (bitsandbytes, torchao) have no optax form, so those
# names run the 32-bit rule with one warning line.
OPTIM_RULES = {
    **dict.fromkeys(("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adamw_apex_fused",
                     "adamw_anyprecision", "paged_adamw_32bit"), "adamw"),
    **dict.fromkeys(("adamw_torch_4bit", "adamw_torch_8bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"), "adamw"),
    **dict.fromkeys(("lion_32bit", "paged_lion_32bit", "lion_8bit", "paged_lion_8bit"), "lion"),
    **dict.fromkeys(("rmsprop", "rmsprop_bnb", "rmsprop_bnb_32bit", "rmsprop_bnb_8bit"), "rmsprop"),
    "adafactor": "adafactor", "sgd": "sgd", "adagrad": "adagrad",
}


def resolve_optim(name: str) -> tuple[str, str | None]:
    """(optax rule, a warning line or None) for transformers' `--optim` name; an error lists the names."""
    if name not in OPTIM_RULES:
        raise ValueError(f"--optim {name!r}: not available in swift_jax; choose one of {sorted(OPTIM_RULES)}")
    rule = OPTIM_RULES[name]
    if "8bit" in name or "4bit" in name:
        return rule, f"--optim {name}: optax keeps no low-bit optimizer state; using {rule} with float32 state"
    return rule, None


def base_optimizer(rule: str, schedule: optax.Schedule, *, weight_decay: float, adam_beta1: float, adam_beta2: float,
                   adam_epsilon: float) -> optax.GradientTransformation:
    """The update rule of `rule` with the hyper-parameters transformers' Trainer gives the torch optimizer of that
    name. Weight decay skips biases and norms (`decay_mask`) everywhere: decoupled for adamw / lion / adafactor
    (as AdamW, bitsandbytes' Lion and HF's Adafactor), added to the gradient for sgd / adagrad / rmsprop (torch's
    `weight_decay`). Adafactor is HF's with the Trainer's `scale_parameter=False, relative_step=False` (factored
    second moments of every matrix, update clipped to RMS 1, decay 1 - t^-0.8, no momentum)."""
    if rule == "adamw":
        return optax.adamw(schedule, b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon, weight_decay=weight_decay, mask=decay_mask)
    if rule == "lion":
        return optax.lion(schedule, b1=adam_beta1, b2=adam_beta2, weight_decay=weight_decay, mask=decay_mask)
    if rule == "adafactor":  # optax.adafactor's weight decay skips the learning rate; HF's decays by lr x wd
        return optax.chain(optax.scale_by_factored_rms(decay_rate=0.8, min_dim_size_to_factor=1, epsilon=1e-30),
                           optax.clip_by_block_rms(1.0), optax.add_decayed_weights(weight_decay, mask=decay_mask),
                           optax.scale_by_learning_rate(schedule))
    coupled = [optax.add_decayed_weights(weight_decay, mask=decay_mask)] if weight_decay else []
    if rule == "sgd":
        return optax.chain(*coupled, optax.sgd(schedule))
    if rule == "adagrad":  # torch's defaults: no initial accumulator, eps 1e-10
        return optax.chain(*coupled, optax.adagrad(schedule, initial_accumulator_value=0.0, eps=1e-10))
    if rule == "rmsprop":  # torch's defaults: alpha 0.99, eps outside the square root
        return optax.chain(*coupled, optax.rmsprop(schedule, decay=0.99, eps=1e-8, eps_in_sqrt=False))
    raise ValueError(f"unknown optimizer rule {rule!r}")


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
    optim: str = "adamw_torch",
) -> optax.GradientTransformation:
    """Global-norm clipping followed by the `--optim` rule (default AdamW; see `base_optimizer`).

    `lorap_lr_ratio` (LoRA+): LoRA+'s B group takes `ratio x` the learning rate, i.e. its whole update
    (step and decoupled decay both scale with the rate) is multiplied by the ratio. `masks` (dotted name ->
    0/1 array over stacked axes, tuners/select.py) zero the gradients of frozen slices before clipping and
    their updates after the rule (weight decay included), so those slices stay bit-identical. `lr_factors`
    (dotted name -> multiple or None) scales whole updates like a per-group learning rate (`--vit_lr`).
    """
    parts = []
    mask = (lambda name: masks.get(name)) if masks else None
    if mask:
        parts.append(scale_by_path(mask))
    if max_grad_norm and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    rule, _ = resolve_optim(optim)
    parts.append(base_optimizer(rule, schedule, weight_decay=weight_decay, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
                                adam_epsilon=adam_epsilon))
    if lorap_lr_ratio:
        parts.append(scale_by_path(lambda name: lorap_lr_ratio if is_lora_plus_b(name) else None))
    if lr_factors:
        parts.append(scale_by_path(lr_factors))
    if mask:
        parts.append(scale_by_path(mask))
    return optax.chain(*parts)
