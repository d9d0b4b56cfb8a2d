"""QLoRA's frozen base: Linear kernels and MoE expert weights stored quantized with qwix (nf4 / int8,
tiled scales).

The quantized kernel replaces the float one inside the same `nnx.Param` (a `qwix.QArray`: packed values
plus per-tile scales); `Linear` and `Experts.weight` dequantize it on the fly in the compute dtype, and
LoRA adapters on top (`--target_parameters` for the experts) train in full precision. The LM head,
embeddings and MoE routers stay unquantized, as in the QLoRA paper.
"""

from __future__ import annotations

import jax.numpy as jnp
import qwix
from flax import nnx

from .lora import EXCLUDED_FROM_ALL_LINEAR, iter_linears

QTYPES = {4: "nf4", 8: jnp.int8}


def quantize_base(model: nnx.Module, *, bits: int = 4, tile_size: int = 64, skip=lambda path: False) -> nnx.Module:
    """Quantize every Linear kernel but the LM head (and those at paths `skip` names: a VL model's vision
    tower and aligner, tuners/multimodal.py), and the MoE expert weights, in place; scales per `tile_size`
    input rows per output column (and per layer / expert for stacked kernels `[..., in, out]`)."""
    from .experts import iter_experts  # lazy: experts imports the models' MoE block

    if bits not in QTYPES:
        raise ValueError(f"--quant_bits {bits}: QLoRA supports {sorted(QTYPES)}")
    kernels = [linear.kernel for path, linear in iter_linears(model)
               if path.split(".")[-1] not in EXCLUDED_FROM_ALL_LINEAR and not skip(path)]
    kernels += [getattr(e, name) for _, e in iter_experts(model) for name in ("gate_proj", "up_proj", "down_proj")]
    for var in kernels:
        var.set_value(quantize_kernel(var.get_value(), QTYPES[bits], tile_size))
    return model


def quantize_kernel(kernel, qtype, tile_size: int):
    """A float kernel `[..., in, out]` quantized with one scale per `tile_size` input rows (all rows when
    they do not divide) per output column and per leading index (layer, expert)."""
    lead = kernel.ndim - 2
    rows = kernel.shape[lead]
    tile = tile_size if rows % tile_size == 0 else rows
    channels = (*range(lead), lead + 1)
    return qwix.quantize(kernel, qtype, tiled_axes={lead: tile}, channelwise_axes=channels)


def is_quantized(linear) -> bool:
    """True when a Linear's kernel is stored quantized."""
    return isinstance(linear.kernel.get_value(), qwix.QArray)
