"""Weight-only post-training quantization and its export formats."""

from .rtn import dequantize, quantize_rtn

__all__ = ["quantize_rtn", "dequantize"]
