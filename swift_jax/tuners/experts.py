"""`--target_parameters`: LoRA on the stacked MoE expert weights (PEFT's `target_parameters`, `ParamWrapper`).

transformers keeps each MoE layer's experts as two fused parameters of `model.layers.{i}.mlp.experts`:
`gate_up_proj` `[E, 2 x mlp, embed]` (gate rows first) and `down_proj` `[E, embed, mlp]`. PEFT adapts such
a parameter with one adapter per expert, `delta[e] = scale * B_e @ A_e`, and so do we: an `ExpertLoRA`
holds A `[E, in, rank]` and B `[E, rank, out]` for one HF parameter, and the MoE block's grouped matmuls
apply it per expert group (`models.moe.LowRank`), never forming the updated weights. `gate_up_proj`'s B
covers our `gate_proj` and `up_proj` side by side (they share A). Target names follow PEFT's rule: a
target matches `<HF module>.<parameter>` in full or as a dotted suffix (`mlp.experts.gate_up_proj`).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.models.moe import Experts, LowRank, Updates
from swift_jax.models.scan import layer_paths, stack_modules, stack_size

from .lora import _ADAPTERS_ENABLED

# HF's fused expert parameter -> our stacked weights it holds, side by side on its output axis. The order
# is transformers' registration order, which fixes PEFT's nesting of the wrappers (hf/peft_experts.py).
EXPERT_PARAMETERS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}
# our weight name -> the key of its update in `models.moe.Updates`
_UPDATE_KEYS = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


class ExpertLoRA(nnx.Module):
    """One HF expert parameter's adapter: A `[E, in, rank]` (PEFT's init: kaiming-uniform, bound
    1/sqrt(in); gaussian: std 1/rank), B `[E, rank, out]` zero; scale alpha / rank (rsLoRA: / sqrt(rank)).
    `parts` are our weights it covers and their widths along `out`."""

    def __init__(self, experts: int, in_features: int, parts: Sequence[tuple[str, int]], *, rank: int, alpha: float,
                 axes: tuple[str, str], param_dtype, rngs: nnx.Rngs, use_rslora: bool = False, init: str = "true"):
        out_features = sum(width for _, width in parts)
        shape_a = (experts, in_features, rank)
        if init == "gaussian":
            a = jax.random.normal(rngs.params(), shape_a, param_dtype) / rank
        else:
            bound = 1.0 / math.sqrt(in_features)
            a = jax.random.uniform(rngs.params(), shape_a, param_dtype, -bound, bound)
        b = jnp.zeros((experts, rank, out_features), param_dtype)
        if init == "false":  # PEFT leaves B at nn.Linear's default (a random, non-identity adapter)
            bound = 1.0 / math.sqrt(rank * experts)
            b = jax.random.uniform(rngs.params(), b.shape, param_dtype, -bound, bound)
        self.lora_a = nnx.LoRAParam(a, logical_axes=("expert", axes[0], "lora_rank"))
        self.lora_b = nnx.LoRAParam(b, logical_axes=("expert", "lora_rank", axes[1]))
        self.parts = tuple(parts)
        self.scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.use_rslora = use_rslora

    def updates(self, dtype) -> dict[str, LowRank]:
        """The `LowRank` update of each weight this parameter covers (B split along `out`)."""
        a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
        out, start = {}, 0
        for name, width in self.parts:
            out[_UPDATE_KEYS[name]] = LowRank(a, b[..., start : start + width], self.scale)
            start += width
        return out


class ExpertsLoRA(nnx.Module):
    """The adapters of one `Experts` block: an `ExpertLoRA` (or None) per HF parameter name."""

    def __init__(self, adapters: dict[str, ExpertLoRA | None]):
        for name in EXPERT_PARAMETERS:
            setattr(self, name, adapters.get(name))

    def adapters(self) -> dict[str, ExpertLoRA]:
        """HF parameter name -> adapter, in transformers' registration order."""
        return {n: getattr(self, n) for n in EXPERT_PARAMETERS if getattr(self, n) is not None}

    def updates(self, dtype) -> Updates:
        """What `Experts.updates` hands the grouped matmuls; nothing inside `adapters_disabled()`."""
        if not _ADAPTERS_ENABLED.get():
            return {}
        return {key: u for adapter in self.adapters().values() for key, u in adapter.updates(dtype).items()}


def iter_experts(model: nnx.Module) -> Iterator[tuple[str, Experts]]:
    """(dotted path, module) of every MoE `Experts` block, e.g. ('model.stacks.1.layers.0.mlp.experts', ...)."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Experts):
            yield ".".join(map(str, path)), module


def hf_expert_modules(model: nnx.Module, path: str) -> list[str]:
    """The HF module path(s) `model.layers.{i}.mlp.experts` of an `Experts` block: one per stacked layer."""
    return layer_paths(model.config, path) or [path]


def matches(key: str, targets: Sequence[str]) -> bool:
    """PEFT's `target_parameters` rule: `key` (`<module>.<parameter>`) equals a target or ends with `.<target>`."""
    return any(key == t or key.endswith("." + t) for t in targets)


def resolve_parameters(model: nnx.Module, targets: Sequence[str]) -> list[tuple[str, Experts, dict[str, list[bool]]]]:
    """For each `Experts` block a target names: (path, module, {HF parameter: hit per stacked layer}).

    A target naming no expert parameter raises an error listing the names the model has."""
    chosen, keys = [], []
    for path, experts in iter_experts(model):
        modules = hf_expert_modules(model, path)
        keys += [f"{m}.{param}" for m in modules for param in EXPERT_PARAMETERS]
        hits = {param: [matches(f"{m}.{param}", targets) for m in modules] for param in EXPERT_PARAMETERS}
        hits = {param: row for param, row in hits.items() if any(row)}
        if hits:
            chosen.append((path, experts, hits))
    missing = [t for t in targets if not any(matches(key, [t]) for key in keys)]
    if missing:
        hint = f"the model's expert parameters look like {keys[:2]}" if keys else "the model has no MoE experts"
        raise ValueError(f"--target_parameters {missing} match no parameter; {hint} (PEFT matches a dotted suffix)")
    return chosen


def loraize_experts(
    model: nnx.Module,
    target_parameters: Sequence[str],
    *,
    rank: int,
    alpha: float,
    rngs: nnx.Rngs,
    use_rslora: bool = False,
    init_weights: str = "true",
    lora_dtype=None,
) -> nnx.Module:
    """Attach per-expert LoRA to the expert parameters `target_parameters` names (in place); returns the model.

    Scanned layers get stacked adapters `[layers, E, ...]`; stacked layers a target leaves out get zero A
    and B, which stay zero through training (and are not exported)."""
    if init_weights not in ("true", "false", "gaussian"):
        raise ValueError(f"--target_parameters with --init_weights {init_weights}: PEFT initialises expert parameters "
                         "with true, false or gaussian only")
    for path, experts, hits in resolve_parameters(model, target_parameters):
        layers = stack_size(experts.gate_proj)
        lead = 0 if layers is None else 1
        dtype = lora_dtype or _float_dtype(experts)

        def make():
            adapters = {}
            for param in hits:
                ours = EXPERT_PARAMETERS[param]
                shapes = [getattr(experts, n).get_value().shape[lead:] for n in ours]  # [E, in, out] each
                axes = tuple(getattr(experts, ours[0]).get_metadata()["logical_axes"])[-2:]
                adapters[param] = ExpertLoRA(shapes[0][0], shapes[0][1], [(n, s[2]) for n, s in zip(ours, shapes)],
                                             rank=rank, alpha=alpha, axes=axes, param_dtype=dtype, rngs=rngs,
                                             use_rslora=use_rslora, init=init_weights)
            return ExpertsLoRA(adapters)

        experts.lora = make() if layers is None else stack_modules([make() for _ in range(layers)])
        for param, row in hits.items():  # layers of a stack the targets leave out: zero adapters
            slots = [s for s, hit in enumerate(row) if not hit]
            if slots:
                adapter = getattr(experts.lora, param)
                for var in (adapter.lora_a, adapter.lora_b):
                    var.set_value(var.get_value().at[jnp.asarray(slots)].set(0))
    return model


def _float_dtype(experts: Experts) -> jnp.dtype:
    """The expert weights' dtype, or float32 when QLoRA stores them quantized."""
    value = experts.gate_proj.get_value()
    return value.dtype if isinstance(value, jax.Array) else jnp.float32


def expert_lora_blocks(model: nnx.Module) -> list[tuple[str, Experts]]:
    """The `Experts` blocks that currently carry an adapter."""
    return [(p, e) for p, e in iter_experts(model) if e.lora is not None]


def merge_expert_lora(model: nnx.Module) -> nnx.Module:
    """Fold every expert adapter into its stacked weights (`W[e] += scale * A_e @ B_e`) and remove it (in place)."""
    for _, experts in expert_lora_blocks(model):
        for adapter in experts.lora.adapters().values():
            for (name, _), update in zip(adapter.parts, adapter.updates(jnp.float32).values()):
                var = getattr(experts, name)
                kernel = var[...]  # [(layers,) E, in, out]
                delta = update.scale * jnp.einsum("...ir,...ro->...io", update.a, update.b)
                var[...] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
        experts.lora = None
    return model
