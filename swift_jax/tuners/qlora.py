"""QLoRA's frozen base: Linear kernels stored quantized with qwix (nf4 / int4 / int8, tiled scales).

The quantized kernel replaces the float one inside the same `nnx.Param` (a `qwix.QArray`: packed values
plus per-tile scales); `Linear` dequantizes it on the fly in the compute dtype, and LoRA adapters on top
train in full precision. The LM head and embeddings stay unquantized, as in the QLoRA paper.
"""

from __future__ import annotations

import jax.numpy as jnp
import qwix
from flax import nnx

from swift_jax.models.scan import stack_size

from .lora import EXCLUDED_FROM_ALL_LINEAR, iter_linears

QTYPES = {4: "nf4", 8: jnp.int8}


def quantize_base(model: nnx.Module, *, bits: int = 4, tile_size: int = 64, skip=lambda path: False) -> nnx.Module:
    """Quantize every Linear kernel but the LM head (and those at paths `skip` names: a VL model's vision
    tower and aligner, tuners/multimodal.py) in place; scales per `tile_size` input rows per column (and per
    layer for the stacked kernels of scanned layers, `[layers, in, out]`)."""
    if bits not in QTYPES:
        raise ValueError(f"--quant_bits {bits}: QLoRA supports {sorted(QTYPES)}")
    for path, linear in iter_linears(model):
        if path.split(".")[-1] in EXCLUDED_FROM_ALL_LINEAR or skip(path):
            continue
        kernel = linear.kernel.get_value()  # [in, out] or [layers, in, out]
        lead = 0 if stack_size(linear.kernel) is None else 1
        rows = kernel.shape[lead]
        tile = tile_size if rows % tile_size == 0 else rows
        channels = (lead + 1,) if lead == 0 else (0, lead + 1)
        quantized = qwix.quantize(kernel, QTYPES[bits], tiled_axes={lead: tile}, channelwise_axes=channels)
        linear.kernel.set_value(quantized)
    return model


def is_quantized(linear) -> bool:
    """True when a Linear's kernel is stored quantized."""
    return isinstance(linear.kernel.get_value(), qwix.QArray)
