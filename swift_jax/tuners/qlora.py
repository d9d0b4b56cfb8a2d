"""QLoRA's frozen base: Linear kernels stored quantized with qwix (nf4 / int4 / int8, tiled scales).

The quantized kernel replaces the float one inside the same `nnx.Param` (a `qwix.QArray`: packed values
plus per-tile scales); `Linear` dequantizes it on the fly in the compute dtype, and LoRA adapters on top
train in full precision. The LM head and embeddings stay unquantized, as in the QLoRA paper.
"""

from __future__ import annotations

import jax.numpy as jnp
import qwix
from flax import nnx

from .lora import EXCLUDED_FROM_ALL_LINEAR, iter_linears

QTYPES = {4: "nf4", 8: jnp.int8}


def quantize_base(model: nnx.Module, *, bits: int = 4, tile_size: int = 64) -> nnx.Module:
    """Quantize every Linear kernel but the LM head in place; scales per `tile_size` input rows per column."""
    if bits not in QTYPES:
        raise ValueError(f"--quant_bits {bits}: QLoRA supports {sorted(QTYPES)}")
    for path, linear in iter_linears(model):
        if path.split(".")[-1] in EXCLUDED_FROM_ALL_LINEAR:
            continue
        kernel = linear.kernel.get_value()  # [in, out]
        tile = tile_size if kernel.shape[0] % tile_size == 0 else kernel.shape[0]
        quantized = qwix.quantize(kernel, QTYPES[bits], tiled_axes={0: tile}, channelwise_axes=(1,))
        linear.kernel.set_value(quantized)
    return model


def is_quantized(linear) -> bool:
    """True when a Linear's kernel is stored quantized."""
    return isinstance(linear.kernel.get_value(), qwix.QArray)
