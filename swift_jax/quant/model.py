"""Quantize every linear layer of a loaded model (but the LM head): RTN, fp8, or GPTQ with calibration.

`quantize_model` returns the quantized layers by module path and leaves the model computing with the
dequantized kernels, so the same object is both the JAX reference of the quantized forward and the
source of the export (`swift_jax.hf.compressed_tensors`).

GPTQ runs layer by layer, as the reference implementation does: the calibration hidden states enter
decoder layer `l`, a tap on each of its linear layers accumulates the Hessian of that layer's inputs,
the layer's kernels are quantized, and the hidden states are recomputed through the *quantized* layer
before they enter layer `l + 1`, so later layers compensate earlier layers' errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.models.decoder import set_scan_layers
from swift_jax.models.layers import Linear

from swift_jax.models.moe import SparseMoE

from .base import QuantizedWeight, QuantSpec, quantizable_linears, set_dequantized
from .experts import MoEInputTap, check_experts, quantize_experts
from .gptq import accumulate_hessian, gptq_quantize_kernel
from .rtn import quantize_kernel


class HessianTap(nnx.Module):
    """Sits in a Linear's adapter slot and accumulates `X^T X` of the layer's inputs; adds nothing."""

    def __init__(self, in_features: int, out_features: int):
        self.out_features = out_features
        self.hessian = nnx.Variable(jnp.zeros((in_features, in_features), jnp.float32))  # [in, in]
        self.rows = nnx.Variable(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.hessian[...] = accumulate_hessian(self.hessian[...], x)
        self.rows[...] = self.rows[...] + x.size // x.shape[-1]
        return jnp.zeros((*x.shape[:-1], self.out_features), x.dtype)

    def mean_hessian(self) -> jax.Array:
        """`2 X^T X / n`, GPTQ's Hessian of the squared reconstruction error."""
        return 2.0 * self.hessian[...] / jnp.maximum(self.rows[...], 1)


def _round_scale(qw: QuantizedWeight, scale_dtype) -> QuantizedWeight:
    """Scales rounded to the dtype they are stored in, so our forward matches the exported one exactly."""
    qw.scale = np.asarray(jnp.asarray(qw.scale).astype(scale_dtype).astype(jnp.float32))
    return qw


def _check_unadapted(linears: list[tuple[str, Linear]]) -> None:
    adapted = [path for path, linear in linears if linear.lora is not None]
    if adapted:
        raise ValueError(f"layers {adapted[:3]}... carry LoRA adapters; merge them (--merge_lora true) before quantizing")


@nnx.jit
def _run_layer(layer, x, cos, sin, segment_ids):
    out = layer(x, cos, sin, segment_ids)
    return out[0] if isinstance(out, tuple) else out  # an MoE layer also returns its router statistics


def _gptq_layerwise(model: nnx.Module, spec: QuantSpec, calibration: np.ndarray, batch_size: int, scale_dtype) -> dict[str, QuantizedWeight]:
    """GPTQ over the decoder layers in order, on calibration token rows `[n, seq]`."""
    n, seq = calibration.shape
    batch = math.gcd(n, batch_size)  # equal batches: one compilation per layer shape
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    segment_ids = jnp.ones_like(positions)
    rotary = model.model.rotary(positions)  # per layer (cos, sin): Gemma 3 layers differ
    embed = nnx.jit(lambda decoder, ids: decoder.embed(ids))
    chunks = [embed(model.model, jnp.asarray(calibration[i : i + batch])) for i in range(0, n, batch)]  # [batch, seq, embed]
    results: dict[str, QuantizedWeight] = {}
    prefix = "model.layers"
    for index, (layer, (cos, sin)) in enumerate(zip(model.model.layers, rotary)):
        linears = [(f"{prefix}.{index}.{path}", m) for path, m in quantizable_linears(layer)]
        for _, linear in linears:
            linear.lora = HessianTap(linear.in_features, linear.out_features)
        moe = layer.mlp if isinstance(layer.mlp, SparseMoE) else None
        if moe is not None:  # the experts' per-expert Hessians
            layer.mlp = MoEInputTap(moe)
        for x in chunks:
            _run_layer(layer, x, cos, sin, segment_ids)
        if moe is not None:
            results.update(layer.mlp.quantize(f"{prefix}.{index}.mlp", spec, lambda qw: _round_scale(qw, scale_dtype)))
            layer.mlp = moe
        for path, linear in linears:
            hessian = linear.lora.mean_hessian()
            linear.lora = None
            qw = gptq_quantize_kernel(linear.kernel[...], hessian, spec)
            qw = _round_scale(qw, scale_dtype)
            set_dequantized(linear, qw)
            results[path] = qw
        chunks = [_run_layer(layer, x, cos, sin, segment_ids) for x in chunks]
    return results


def quantize_model(
    model: nnx.Module,
    spec: QuantSpec,
    *,
    calibration: np.ndarray | None = None,
    batch_size: int = 8,
    scale_dtype: str | None = None,
) -> dict[str, QuantizedWeight]:
    """Quantize every linear layer but the LM head, and every MoE expert (quant/experts.py), in place:
    kernels become their dequantized values.

    `calibration` `[n, seq]` token ids are required by GPTQ (RTN and fp8 ignore them); `scale_dtype`
    is the dtype the scales are stored in (default: the model's parameter dtype). Returns
    `{module path: QuantizedWeight}` (paths like `model.layers.0.self_attn.q_proj`; experts
    `model.layers.0.mlp.experts.gate_proj[3]`).
    A model with scanned layers is switched to the unrolled layout first (`set_scan_layers`, in place):
    quantization and GPTQ's layer-by-layer calibration work on one layer at a time.
    """
    set_scan_layers(model, False)
    linears = list(quantizable_linears(model))
    _check_unadapted(linears)
    for path, linear in linears:
        spec.groups(linear.in_features, path)  # fail before any work if a layer does not divide
    check_experts(model, spec)
    scale_dtype = jnp.dtype(scale_dtype or model.config.params_dtype)
    if spec.method == "gptq":
        if calibration is None or len(calibration) == 0:
            raise ValueError("--quant_method gptq needs calibration data: pass --dataset (text or chat rows)")
        outside = [path for path, _ in linears if not path.startswith("model.layers.")]
        if outside:
            raise NotImplementedError(f"GPTQ walks the decoder layers only; layers {outside} lie outside them")
        return _gptq_layerwise(model, spec, np.asarray(calibration), batch_size, scale_dtype)
    results = quantize_experts(model, spec, lambda qw: _round_scale(qw, scale_dtype))
    for path, linear in linears:
        qw = _round_scale(quantize_kernel(linear.kernel[...], spec), scale_dtype)
        set_dequantized(linear, qw)
        results[path] = qw
    return results
