"""Quantize a loaded model and write it in the compressed-tensors format, in one call.

    save_quantized(model, "out-int4", QuantSpec("gptq", bits=4, group_size=128), calibration=ids)

Every Linear but the LM head is quantized (`swift_jax.quant.quantize_model`), the model is left computing
with the dequantized kernels (the JAX reference of the exported forward), and the folder is written by
`swift_jax.hf.compressed_tensors.save_compressed`.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from swift_jax.hf.compressed_tensors import pack_int32, save_compressed

from .base import QuantizedWeight, QuantSpec
from .model import quantize_model

__all__ = ["pack_int32", "save_quantized"]


def save_quantized(
    model: nnx.Module,
    output_dir: str,
    spec: QuantSpec,
    *,
    calibration: np.ndarray | None = None,
    batch_size: int = 8,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
) -> dict[str, QuantizedWeight]:
    """Quantize `model` in place as `spec` says and write it to `output_dir`; returns the quantized layers.

    `calibration` `[n, seq]` token ids feed GPTQ (`batch_size` rows per forward); `dtype` is the stored dtype of scales and unquantized
    tensors (default: the model's parameter dtype).
    """
    quantized = quantize_model(model, spec, calibration=calibration, batch_size=batch_size, scale_dtype=dtype)
    save_compressed(model, quantized, spec, output_dir, dtype=dtype, max_shard_size=max_shard_size)
    return quantized
