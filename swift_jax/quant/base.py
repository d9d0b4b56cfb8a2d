"""What every weight-only quantizer shares: the settings, the result of one layer, and the layer list.

A quantized layer is stored in our layout (kernel `[in, out]`): integer (or float8) values `qvalue`
`[in, out]` and scales `scale` `[groups, out]`, one scale per `group_size` input rows and output
column (`groups = 1` for per-channel). The dequantized kernel is `qvalue * scale` repeated over each
group; that is what both our quantized forward and the compressed-tensors consumers compute.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
from flax import nnx

from swift_jax.models.layers import Linear

QUANT_METHODS = ("rtn", "gptq", "fp8")
INT_BITS = (4, 8)
# Linear layers kept in full precision (as ms-swift / llm-compressor do for the output layer).
NOT_QUANTIZED = ("lm_head",)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Settings of a weight-only quantization: method, bits and input-group size (-1: per channel)."""

    method: str = "rtn"
    bits: int = 4
    group_size: int = 128

    def __post_init__(self):
        if self.method not in QUANT_METHODS:
            raise ValueError(f"--quant_method {self.method!r}: expected one of {QUANT_METHODS}")
        if self.method == "fp8":
            if self.bits != 8:
                raise ValueError(f"--quant_method fp8 stores 8-bit floats; got --quant_bits {self.bits} (use 8)")
            return
        if self.bits not in INT_BITS:
            raise ValueError(f"--quant_bits {self.bits}: {self.method} supports {INT_BITS}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"--group_size {self.group_size}: expected a positive size (e.g. 128) or -1 for per-channel")

    @property
    def is_float(self) -> bool:
        return self.method == "fp8"

    def groups(self, in_features: int, where: str) -> int:
        """Number of scale groups along the input dimension; errors name the layer that does not divide."""
        if self.is_float or self.group_size == -1:
            return 1
        if in_features % self.group_size:
            raise ValueError(
                f"{where}: input size {in_features} is not a multiple of --group_size {self.group_size}; "
                "choose a group size that divides every layer's input size (e.g. 32, 64, 128) or -1 for per-channel"
            )
        return in_features // self.group_size


@dataclasses.dataclass
class QuantizedWeight:
    """One quantized kernel in our layout; `qvalue` `[in, out]` (int8 holding int4/int8, or float8_e4m3fn),
    `scale` `[groups, out]` float32."""

    qvalue: np.ndarray
    scale: np.ndarray

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The kernel `[in, out]` the quantized layer computes with."""
        groups, out = self.scale.shape
        q = self.qvalue.astype(np.float32).reshape(groups, -1, out)
        return (q * self.scale[:, None, :]).reshape(-1, out).astype(dtype)


def quantizable_linears(model: nnx.Module) -> Iterator[tuple[str, Linear]]:
    """(dotted module path, Linear) for every linear layer that weight-only quantization touches."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Linear) and str(path[-1]) not in NOT_QUANTIZED:
            yield ".".join(map(str, path)), module


def set_dequantized(linear: Linear, qw: QuantizedWeight) -> None:
    """Replace a Linear's kernel by its dequantized value (the quantized model's forward, in JAX)."""
    kernel = linear.kernel[...]
    linear.kernel[...] = jax.device_put(qw.dequantize().astype(kernel.dtype), kernel.sharding)
