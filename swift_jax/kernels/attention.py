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
import importlib
from typing import Callable, Iterator

import jax


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
# TPU: JAX's own splash attention. GPU: the XLA reference until `pallas_gpu` has been compiled and
# timed on a real GPU (scripts/bench_attention.py); so far it is verified in interpret mode and by
# lowering to Triton IR only, so it is opt-in (`impl="pallas_gpu"` / `--attn_impl pallas_gpu`).
# cuDNN cannot take packed rows; name it explicitly for unpacked bf16 batches. CPU: the reference
# one query block at a time (half the causal work; 1.6x faster fwd+bwd on packed rows of 512).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("xla_blocked", "xla"),
    "gpu": ("xla",),
    "tpu": ("pallas_tpu", "xla"),
}

_DEFAULT_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("attention_impl", default="auto")


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Within the block, `attention(..., impl="auto")` means `impl` (e.g. a model's `attn_impl`).

    Read at trace time, so wrap the tracing call (`jit`, first call of a jitted step) with it.
    """
    if impl != "auto" and impl not in BACKENDS:
        raise ValueError(f"attention impl={impl!r} is not available; expected 'auto' or one of {sorted(BACKENDS)}")
    token = _DEFAULT_IMPL.set(impl)
    try:
        yield
    finally:
        _DEFAULT_IMPL.reset(token)


def resolve_impl(impl: str, q: jax.Array, k: jax.Array, **options) -> str:
    """The backend name that `attention` will run for these arguments (see AUTO_ORDER)."""
    if impl == "auto":
        impl = _DEFAULT_IMPL.get()
    if impl != "auto" and impl not in BACKENDS:
        raise ValueError(f"attention impl={impl!r} is not available; expected 'auto' or one of {sorted(BACKENDS)}")
    if options.get("bidirectional_ids") is not None:  # only the reference implements bidirectional blocks
        return "xla"
    candidates = AUTO_ORDER.get(jax.default_backend(), ("xla",)) if impl == "auto" else (impl,)
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
    name = resolve_impl(impl, q, k, **options)
    return BACKENDS[name].fn(q, k, v, **options)
