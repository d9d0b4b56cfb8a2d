"""Weight-only post-training quantization: RTN and fp8 (through qwix) and GPTQ (in JAX)."""

from .base import QUANT_METHODS, QuantizedWeight, QuantSpec, quantizable_linears
from .gptq import gptq_quantize_kernel
from .model import quantize_model
from .rtn import quantize_kernel

__all__ = [
    "QUANT_METHODS",
    "QuantSpec",
    "QuantizedWeight",
    "gptq_quantize_kernel",
    "quantizable_linears",
    "quantize_kernel",
    "quantize_model",
]
