"""LoRA as a transform of the module tree (levanter's vocabulary: loraize / merge / partition).

`loraize` attaches a `LoRA` adapter to every targeted `Linear` (its `lora` attribute); the layer then
computes `x @ W + scale * (dropout(x) @ A) @ B` without forming `W + scale * A @ B`. The adapters are
`nnx.LoRAParam`s, so "train only the adapters" is the filter `nnx.LoRAParam`; the frozen base kernels
stay untouched (bit-identical) and are never copied. Target names are the HF module names our tree
uses (`q_proj`, ..., `down_proj`), i.e. PEFT's `target_modules`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from swift_jax.models.layers import Linear
from swift_jax.models.scan import stack_modules, stack_size

ALL_LINEAR = "all-linear"
# Linear layers never adapted by `all-linear` (PEFT excludes the output layer too).
EXCLUDED_FROM_ALL_LINEAR = ("lm_head",)

lora_state_filter = nnx.LoRAParam  # the optimizer's `wrt` for LoRA training

_ADAPTERS_ENABLED = contextvars.ContextVar("swift_jax_lora_adapters_enabled", default=True)


@contextlib.contextmanager
def adapters_disabled():
    """Inside this block every LoRA layer computes the base layer only (`x @ W`), as PEFT's
    `disable_adapter()`: the DPO-family reference model is the policy's own weights with no copy.

    The switch is read when a layer is called, i.e. while tracing, so `with adapters_disabled(): model(x)`
    inside a jit-compiled function compiles the adapter-free path for that call only."""
    token = _ADAPTERS_ENABLED.set(False)
    try:
        yield
    finally:
        _ADAPTERS_ENABLED.reset(token)


def low_rank_product(x: jax.Array, a: jax.Array, b: jax.Array, scale: float, *, platform: str | None = None) -> jax.Array:
    """`scale * (x @ a) @ b` for x `[..., in]`, a `[in, rank]`, b `[rank, out]`.

    Its backward is the one `LOW_RANK_PRODUCTS` names for `platform` (default: JAX's default backend):
    a hand-written one on XLA:CPU (`low_rank_product_cpu`), plain autodiff elsewhere.
    """
    return LOW_RANK_PRODUCTS.get(platform or jax.default_backend(), low_rank_product_autodiff)(x, a, b, scale)


def low_rank_product_autodiff(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """`scale * (x @ a) @ b` differentiated by JAX (GPU, TPU: their compilers lay the backward out well)."""
    return ((x @ a) @ b) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def low_rank_product_cpu(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """`scale * (x @ a) @ b` with a hand-written backward, for XLA:CPU.

    The backward is the textbook one (dx = g b^T a^T, da = x^T (g b^T), db = (x a)^T g, g scaled once);
    it is spelled out because XLA:CPU, given autodiff's version, wrote the output cotangent transposed
    through a fused elementwise loop (the SiLU backward of the MLP): about 30% of a LoRA step on the CPU
    (scripts/bench_train.py). Here every contraction reads g in its own `[..., out]` layout. The
    optimisation barrier it needs would only constrain the GPU and TPU compilers, so only CPU uses it.
    """
    return ((x @ a) @ b) * scale


def _low_rank_forward(x, a, b, scale):
    xa = x @ a  # [..., rank]
    return (xa @ b) * scale, (x, xa, a, b)


def _low_rank_backward(scale, residuals, g):
    x, xa, a, b = residuals
    g = g * jnp.asarray(scale, g.dtype)  # [..., out]
    g_xa = g @ b.T  # [..., rank]
    # The weight gradients contract over tokens. Only the rank-sized operands are transposed, and
    # materialised so (the barrier), so that XLA does not choose to transpose the token-sized ones.
    tokens_first = lambda t: t.reshape(-1, t.shape[-1])  # [tokens, features]
    rank_first = lambda t: jax.lax.optimization_barrier(tokens_first(t).T)  # [rank, tokens]
    grad_a = (rank_first(g_xa) @ tokens_first(x)).T  # [in, rank]
    grad_b = rank_first(xa) @ tokens_first(g)  # [rank, out]
    return g_xa @ a.T, grad_a, grad_b


low_rank_product_cpu.defvjp(_low_rank_forward, _low_rank_backward)

# platform -> the low-rank product whose backward suits it; platforms not listed use autodiff
LOW_RANK_PRODUCTS = {"cpu": low_rank_product_cpu}


class LoRA(nnx.Module):
    """A low-rank update `scale * (dropout(x) @ lora_a) @ lora_b` for one Linear layer.

    lora_a: [in, rank], initialised like PEFT's (kaiming-uniform, bound 1/sqrt(in); `init="gaussian"`:
    normal with std 1/rank); lora_b: [rank, out], zero, so a fresh adapter leaves the output unchanged.
    `scale` is alpha / rank, or alpha / sqrt(rank) with `use_rslora` (rank-stabilised LoRA).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        alpha: float,
        dropout: float,
        axes: tuple[str, str],
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        use_rslora: bool = False,
        init: str = "true",
    ):
        if init == "gaussian":
            a = jax.random.normal(rngs.params(), (in_features, rank), param_dtype) / rank
        else:
            bound = 1.0 / math.sqrt(in_features)
            a = jax.random.uniform(rngs.params(), (in_features, rank), param_dtype, -bound, bound)
        self.lora_a = nnx.LoRAParam(a, logical_axes=(axes[0], "lora_rank"))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), param_dtype), logical_axes=("lora_rank", axes[1]))
        self.scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.use_rslora = use_rslora
        self.dtype = dtype
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if not _ADAPTERS_ENABLED.get():  # see adapters_disabled: no update, no dropout draw
            return jnp.zeros((*x.shape[:-1], self.lora_b.shape[-1]), self.dtype)
        if self.dropout is not None:
            x = self.dropout(x)
        a, b = self.lora_a[...].astype(self.dtype), self.lora_b[...].astype(self.dtype)
        return low_rank_product(x, a, b, self.scale)

    def adapt(self, x: jax.Array, y: jax.Array, weight) -> jax.Array:
        """The adapted layer's output from its input `x`, base output `y = x @ W` and `weight()` (W, for
        variants like DoRA that rescale the base)."""
        return y + self(x)

    def delta(self) -> jax.Array:
        """The dense update `scale * A @ B` `[in, out]` in float32 (for merging); `[layers, in, out]` stacked."""
        return self.scale * (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32))

    def merged(self, kernel: jax.Array) -> jax.Array:
        """The float32 kernel `[..., in, out]` with this adapter folded in (what `merge_lora` stores)."""
        return kernel + self.delta()


def inference_view(model: nnx.Module) -> nnx.Module:
    """The model as generation and scoring run it: the same variables, LoRA dropout off (`nnx.view`).

    Dropout is a training-time transform; every inference entry (the generator, rollouts, scorers) takes this
    view, so a dropout-carrying adapter (ms-swift's default `--lora_dropout 0.05`) never draws from its RNG
    stream inside a decode loop. The caller's model keeps its mode (training continues with dropout)."""
    if not any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_graph(model)):
        return model
    return nnx.view(model, only=nnx.Dropout, deterministic=True)


def iter_linears(model: nnx.Module) -> Iterator[tuple[str, Linear]]:
    """(dotted path, module) for every `Linear` in the tree, e.g. ('model.layers.0.self_attn.q_proj', ...)."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Linear):
            yield ".".join(map(str, path)), module


def resolve_targets(model: nnx.Module, target_modules: str | Sequence[str]) -> list[tuple[str, Linear]]:
    """The Linear layers that `target_modules` names (PEFT semantics: module-name suffix match).

    `all-linear` is every Linear but the LM head. Names that match nothing raise an error listing the
    layer names the model has.
    """
    linears = list(iter_linears(model))
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    names = [t for t in target_modules]
    if ALL_LINEAR in names:
        return [(p, m) for p, m in linears if p.split(".")[-1] not in EXCLUDED_FROM_ALL_LINEAR]
    chosen = [(p, m) for p, m in linears if p.split(".")[-1] in names or p in names]
    found = {p.split(".")[-1] for p, _ in chosen} | {p for p, _ in chosen}
    missing = [n for n in names if n not in found]
    if missing:
        available = sorted({p.split(".")[-1] for p, _ in linears})
        raise ValueError(f"target_modules {missing} match no layer; the model's linear layers are {available} (or 'all-linear')")
    return chosen


def loraize(
    model: nnx.Module,
    *,
    target_modules: str | Sequence[str] = ALL_LINEAR,
    rank: int = 8,
    alpha: float = 32.0,
    dropout: float = 0.05,
    rngs: nnx.Rngs,
    use_rslora: bool = False,
    use_dora: bool = False,
    init_weights: str | bool = True,
    lora_dtype=None,
    target_regex: str | None = None,
) -> nnx.Module:
    """Attach a fresh LoRA adapter to every targeted Linear (in place); returns the model.

    A Linear of scanned layers (kernel `[layers, in, out]`) gets stacked adapters: one independently
    initialised adapter per layer, A `[layers, in, rank]`, B `[layers, rank, out]`. `use_dora` attaches
    DoRA adapters (tuners/dora.py); `init_weights` `pissa`/`pissa_niter_N`/`olora` start the adapter from
    the kernel's principal part and leave the residual in the kernel (tuners/init.py); `lora_dtype` stores
    the adapters in that dtype (default: the kernel's). `target_regex` replaces `target_modules` by a
    regex over the HF module names (PEFT's string `target_modules`); stacked layers it leaves out get
    zero adapters that stay zero.
    """
    from .init import check_init_weights, initialize_from_kernel

    if rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {rank}")
    init = check_init_weights(init_weights)
    targets, left_out = resolve_regex(model, target_regex) if target_regex else (resolve_targets(model, target_modules), {})
    adapter_class = _adapter_class(use_dora)
    for path, linear in targets:
        axes = tuple(linear.kernel.get_metadata()["logical_axes"])
        layers = stack_size(linear.kernel)
        make = lambda: adapter_class(
            linear.in_features,
            linear.out_features,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            axes=axes[-2:],
            dtype=linear.dtype,
            param_dtype=lora_dtype or _float_dtype(linear),
            rngs=rngs,
            use_rslora=use_rslora,
            init=init,
        )
        linear.lora = make() if layers is None else stack_modules([make() for _ in range(layers)])
        initialize_from_kernel(linear, init)  # PiSSA / OLoRA (no-op otherwise), then DoRA's magnitude
        if use_dora:
            linear.lora.init_magnitude(linear.weight)
        if path in left_out:
            _leave_out(linear.lora, left_out[path], path)
    return model


def _adapter_class(use_dora: bool) -> type:
    if not use_dora:
        return LoRA
    from .dora import DoRA  # lazy: dora builds on this module

    return DoRA


def _float_dtype(linear: Linear) -> jnp.dtype:
    """The kernel's dtype, or the compute dtype when the kernel is stored quantized (QLoRA)."""
    value = linear.kernel.get_value()
    return value.dtype if isinstance(value, jax.Array) else linear.dtype


def resolve_regex(model: nnx.Module, target_regex: str) -> tuple[list[tuple[str, Linear]], dict[str, list[int]]]:
    """The Linear layers with a HF module name (`model.layers.3.self_attn.q_proj`) the regex matches in full
    (PEFT's string `target_modules`), and for each scanned stack matched in only some layers, the slots
    it leaves out."""
    import re

    from swift_jax.hf.peft import hf_module_paths  # lazy: hf.peft builds on this module

    pattern = re.compile(target_regex)
    chosen, left_out = [], {}
    for path, linear in iter_linears(model):
        hits = [bool(pattern.fullmatch(m)) for m in hf_module_paths(model, path)]
        if any(hits):
            chosen.append((path, linear))
        if any(hits) and not all(hits):
            left_out[path] = [slot for slot, hit in enumerate(hits) if not hit]
    if not chosen:
        example = hf_module_paths(model, next(iter_linears(model))[0])[0]
        raise ValueError(f"--target_regex {target_regex!r} matches no linear layer (names look like {example})")
    return chosen, left_out


def _leave_out(lora: LoRA, slots: list[int], path: str) -> None:
    """Zero A and B in the stacked slots a regex leaves out: their gradients and AdamW updates are then
    exactly zero, so those layers stay unadapted through training (and the PEFT export skips them)."""
    if hasattr(lora, "magnitude") or hasattr(lora, "initial_a"):
        raise ValueError(f"--target_regex selects only some layers of the scanned stack {path}; with DoRA, PiSSA or "
                         "OLoRA select whole stacks (every layer of the run) or use target_modules")
    for var in (lora.lora_a, lora.lora_b):
        var.set_value(var.get_value().at[jnp.asarray(slots)].set(0))


def lora_layers(model: nnx.Module) -> list[tuple[str, Linear]]:
    """The Linear layers that currently carry an adapter."""
    return [(p, m) for p, m in iter_linears(model) if m.lora is not None]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base kernel (`W += scale * A @ B`; DoRA rescales) and remove it (in place);
    MoE expert adapters too (tuners/experts.py)."""
    from .experts import merge_expert_lora  # lazy: experts builds on this module

    for _, linear in lora_layers(model):
        kernel = linear.kernel[...]
        linear.kernel[...] = linear.lora.merged(kernel.astype(jnp.float32)).astype(kernel.dtype)
        linear.lora = None
    return merge_expert_lora(model)


def count_params(model: nnx.Module, *filters) -> int:
    """Number of scalars in the model's variables matching `filters` (default: all Params)."""
    state = nnx.state(model, *(filters or (nnx.Param,)))
    return sum(int(x.size) for x in jax.tree.leaves(state))
