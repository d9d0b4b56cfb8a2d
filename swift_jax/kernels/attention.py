"""The one attention entry point, dispatching to a backend by name.

Every backend takes `[batch, seq, heads, head_dim]` queries and `[batch, seq, kv_heads, head_dim]`
keys/values, `segment_ids` (0 = padding, equal ids attend to each other) and the same mask options.
The XLA reference is always available and is the oracle for the others. A backend that cannot run
a particular call (for example decoding with `q_offset`) hands it to the XLA reference.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
from typing import Callable, Iterator

import jax

from swift_jax.parallel.sequence import sequence_parallel_attention, sequence_shards


def _always_supported(*args, **kwargs) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
    """An attention implementation, imported on first use (the Pallas/Triton modules cost ~0.4 s to import,
    which a CPU run never needs)."""

    module: str
    fn_name: str
    reason_name: str | None  # None: supports every call

    @property
    def fn(self) -> Callable[..., jax.Array]:
        return getattr(importlib.import_module(self.module, __package__), self.fn_name)

    @property
    def unsupported_reason(self) -> Callable[..., str | None]:  # returns None when the backend can run the call
        if self.reason_name is None:
            return _always_supported
        return getattr(importlib.import_module(self.module, __package__), self.reason_name)


BACKENDS: dict[str, Backend] = {
    "xla": Backend(".xla", "xla_attention", None),
    "xla_blocked": Backend(".xla", "xla_blocked_attention", "blocked_unsupported_reason"),
    "pallas_gpu": Backend(".pallas_gpu", "pallas_gpu_attention", "unsupported_reason"),
    "pallas_tpu": Backend(".pallas_tpu", "pallas_tpu_attention", "unsupported_reason"),
    "cudnn": Backend(".cudnn", "cudnn_attention", "unsupported_reason"),
}

# What impl="auto" tries, in order, per platform; the first backend that supports the call wins.
# TPU: JAX's own splash attention. GPU: cuDNN's fused kernel (jax.nn.dot_product_attention) for bf16/fp16
# without soft caps; it cannot take packed rows, so a batch whose rows hold several segments takes, at run
# time, the next backend that supports the call (`packed_fallback`); then the Pallas (Triton) kernel,
# which skips dead tiles of packed rows and takes every self-attention call (numerics verified in
# interpret mode and its Triton lowering checked on CPU; `--attn_impl xla_blocked` opts out); decoding
# takes the reference. CPU: the blocked reference (half the causal work; 1.6x faster fwd+bwd on packed rows of
# 512), else the reference. Decoding (q_offset) and sequence-parallel local queries run the reference.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("xla_blocked", "xla"),
    "gpu": ("cudnn", "pallas_gpu", "xla"),
    "tpu": ("pallas_tpu", "xla"),
}

# ms-swift's `--attn_impl` names (transformers' attn_implementation) -> the backend that does that job here:
# flash attention (any version) and sdpa are fused kernels, which `auto` picks per platform (cuDNN / Pallas on GPU,
# splash on TPU, the blocked reference on CPU); eager materialises the score matrix, as the XLA reference does.
MS_SWIFT_IMPLS = {"flash_attn": "auto", "flash_attention_2": "auto", "flash_attention_3": "auto",
                  "flash_attention_4": "auto", "sdpa": "auto", "eager": "xla"}


def backend_name(impl: str) -> str:
    """The backend an `--attn_impl` value names: ours ('auto', 'xla', 'pallas_gpu', ...) or ms-swift's (MS_SWIFT_IMPLS);
    an unknown value is an error listing both."""
    impl = MS_SWIFT_IMPLS.get(impl, impl)
    if impl != "auto" and impl not in BACKENDS:
        raise ValueError(f"attention impl={impl!r} is not available; expected 'auto' or one of {sorted(BACKENDS)}, "
                         f"or one of ms-swift's names {sorted(MS_SWIFT_IMPLS)}")
    return impl


_DEFAULT_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("attention_impl", default="auto")


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Within the block, `attention(..., impl="auto")` means `impl` (e.g. a model's `attn_impl`).

    Read at trace time, so wrap the tracing call (`jit`, first call of a jitted step) with it.
    """
    token = _DEFAULT_IMPL.set(backend_name(impl))
    try:
        yield
    finally:
        _DEFAULT_IMPL.reset(token)


def resolve_impl(
    impl: str, q: jax.Array, k: jax.Array, *, platform: str | None = None, exclude: tuple[str, ...] = (), **options
) -> str:
    """The backend name that `attention` will run for these arguments (see AUTO_ORDER).

    `platform` ("cpu", "gpu", "tpu") defaults to JAX's default backend; `exclude` drops backends from
    the auto order (the cuDNN backend's fallback for packed rows excludes itself).
    """
    impl = backend_name(_DEFAULT_IMPL.get() if impl == "auto" else impl)
    if options.get("bidirectional_ids") is not None:  # only the reference implements bidirectional blocks
        return "xla"
    order = AUTO_ORDER.get(platform or jax.default_backend(), ("xla",))
    candidates = tuple(n for n in order if n not in exclude) if impl == "auto" else (impl,)
    for name in candidates:
        if BACKENDS[name].unsupported_reason(q, k, **options) is None:
            return name
    return "xla"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array,
    q_segment_ids: jax.Array | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
    scale: float | None = None,
    q_offset: jax.Array | int | None = None,
    bidirectional_ids: jax.Array | None = None,
    impl: str = "auto",
) -> jax.Array:
    """Multi-head attention over packed rows; see `xla_attention` for the exact semantics.

    `q_offset` places the queries inside a longer key sequence (decoding against a KV cache).
    `bidirectional_ids` `[batch, kv_len]` lifts the causal mask inside blocks of equal positive id (Gemma 3's
    image tokens see their whole image); only the XLA reference runs such calls.
    `impl` names a backend ("xla", "xla_blocked", "pallas_gpu", "pallas_tpu", "cudnn") or "auto", which picks by
    platform and arguments (AUTO_ORDER). Pallas backends run in interpret mode off their platform,
    so any impl works everywhere; a call a backend cannot run goes to "xla".
    Under a mesh with a `sequence` axis (`--sequence_parallel_size`), causal self-attention (the decoder's)
    runs sequence-parallel (`swift_jax.parallel.sequence`): local queries against the all-gathered keys and
    values; bidirectional calls (vision encoders, whose tokens are not sequence-sharded) run as they are.
    """
    options = dict(
        segment_ids=segment_ids,
        q_segment_ids=q_segment_ids,
        causal=causal,
        sliding_window=sliding_window,
        logits_soft_cap=logits_soft_cap,
        scale=scale,
        q_offset=q_offset,
    )
    if bidirectional_ids is not None:
        options["bidirectional_ids"] = bidirectional_ids
    if causal and q_offset is None and q_segment_ids is None and sequence_shards() > 1:
        options = {key: value for key, value in options.items() if key not in ("q_segment_ids", "q_offset")}
        return sequence_parallel_attention(functools.partial(attention, impl=impl), q, k, v, **options)
    name = resolve_impl(impl, q, k, **options)
    return BACKENDS[name].fn(q, k, v, **options)


def packed_fallback(q: jax.Array, k: jax.Array, v: jax.Array, **options) -> jax.Array:
    """Attention by the backend auto picks on this platform after cuDNN: what runs a batch of packed rows."""
    name = resolve_impl("auto", q, k, exclude=("cudnn",), **options)
    return BACKENDS[name].fn(q, k, v, **options)
