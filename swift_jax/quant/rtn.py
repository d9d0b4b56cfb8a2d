"""Round-to-nearest quantization of one kernel (int4/int8 group-wise, fp8 per-channel) with qwix.

qwix's `quantize` gives the scales and values: symmetric absmax calibration, one scale per
`group_size` input rows (its `tiled_axes`) and per output column (its `channelwise_axes`). Its integer
convention maps the group's absmax to qmax + 0.5 (int4: 7.5), so the top bucket is fully used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import qwix

from .base import QuantizedWeight, QuantSpec

_INT_QTYPES = {4: jnp.int4, 8: jnp.int8}


def int_bound(bits: int) -> float:
    """The absmax that maps to the edge of the integer range; qwix's convention (qmax + 0.5)."""
    return 2 ** (bits - 1) - 0.5


def quantize_kernel(kernel: jax.Array, spec: QuantSpec) -> QuantizedWeight:
    """RTN (or fp8) quantization of a kernel `[in, out]`: values `[in, out]`, scales `[groups, out]`."""
    kernel = jnp.asarray(kernel, jnp.float32)
    if spec.is_float:
        qarray = qwix.quantize(kernel, jnp.float8_e4m3fn, channelwise_axes=(1,))
        qvalue = np.asarray(jax.device_get(qarray.qvalue))
    else:
        group = kernel.shape[0] if spec.group_size == -1 else spec.group_size
        spec.groups(kernel.shape[0], "kernel")
        qarray = qwix.quantize(kernel, _INT_QTYPES[spec.bits], channelwise_axes=(1,), tiled_axes={0: group})
        qvalue = np.asarray(jax.device_get(qarray.qvalue.astype(jnp.int8)))
    scale = np.asarray(jax.device_get(qarray.scale), np.float32)  # [groups, out]
    return QuantizedWeight(qvalue=qvalue, scale=scale)
