"""The reference a method measures its policy against (DPO, KTO, GRPO), in one place.

Where it comes from (`reference_mode`):

- `adapters_off`: the policy's own weights with every LoRA adapter switched off (PEFT's `disable_adapter()` in
  ms-swift): no extra parameter memory, read from the current state at each use;
- `frozen`: a separate frozen model: full fine-tuning's starting model, `--ref_model`, with `--ref_adapters`
  merged (`load_frozen`); the trainer passes its state to the loss as `extra`;
- `free`: none (`--reference_free`: log-probs 0).

Precomputed values (`--precompute_ref_log_probs`) come from one of the first two, once, before training
(`preference/precompute.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from flax import nnx

from swift_jax.tuners.lora import adapters_disabled


def reference_mode(*, reference_free: bool, separate: bool) -> str:
    """free | frozen (`separate`: full fine-tuning, --ref_model or --ref_adapters) | adapters_off."""
    if reference_free:
        return "free"
    return "frozen" if separate else "adapters_off"


def load_frozen(path: str, *, dtype: str | None, mesh, adapters: Sequence[str] = ()) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, state) of a frozen reference: the model at `path` (sharded on `mesh`) with `adapters` merged."""
    from swift_jax.modeling import load_model
    from swift_jax.trainer.setup import resolve_path
    from swift_jax.tuners import load_adapter, merge_lora

    model = load_model(resolve_path(path), dtype=dtype, mesh=mesh)
    for adapter in adapters:
        merge_lora(load_adapter(model, adapter))
    return nnx.split(model)


@contextlib.contextmanager
def reference_of(policy: nnx.Module | None, frozen: nnx.Module | None = None) -> Iterator[nnx.Module]:
    """The reference model to call inside the block (traced or not): `frozen` in eval mode when given, else
    `policy` with every LoRA adapter switched off (the same graph without its adapters)."""
    if frozen is not None:
        frozen.eval()
        yield frozen
        return
    with adapters_disabled():
        yield policy
