"""Weight-only quantization of MoE expert weights (RTN, fp8, GPTQ), one expert at a time.

Each expert's `[in, out]` slice of a stacked weight is quantized as a Linear kernel would be, and written
as HF's per-expert tensors (`...mlp.experts.{j}.gate_proj.weight_packed`, ...), which transformers
dequantizes and fuses into its `gate_up_proj` / `down_proj` when loading. Results are keyed
`<Experts path>.<weight>[<expert>]`, e.g. `model.layers.0.mlp.experts.gate_proj[3]`.

GPTQ needs each expert's own Hessian: `MoEInputTap` stands in for a layer's MoE block during calibration
and accumulates, per expert, `X_e^T X_e` of the tokens routed to it (gate/up inputs) and `H_e^T H_e` of
their `act(x W_gate) * x W_up` (down inputs), computed densely over the experts (a calibration-time cost
of `experts / top_k` times the block's own). An expert no calibration token reaches gets RTN.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.models.moe import Experts, SparseMoE
from swift_jax.tuners.experts import iter_experts

from .base import QuantizedWeight, QuantSpec
from .gptq import HIGHEST, gptq_quantize_kernel
from .rtn import quantize_kernel

EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"(.+)\[(\d+)\]\Z")


def expert_key(path: str, name: str, expert: int) -> str:
    """The result key of one expert's slice of a stacked weight."""
    return f"{path}.{name}[{expert}]"


def split_key(key: str) -> tuple[str, int] | None:
    """`(parameter path, expert)` of an expert result key, None for a Linear's key."""
    m = _KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else None


def check_experts(model: nnx.Module, spec: QuantSpec) -> None:
    """Refuse adapted experts and sizes the group size does not divide, before any work."""
    for path, experts in iter_experts(model):
        if experts.lora is not None:
            raise ValueError(f"{path} carries LoRA adapters; merge them (--merge_lora true) before quantizing")
        for name in EXPERT_WEIGHTS:
            spec.groups(getattr(experts, name).shape[-2], f"{path}.{name}")


def _store(experts: Experts, name: str, qws: list[QuantizedWeight]) -> None:
    """Replace a stacked weight by its dequantized experts (the quantized model's forward, in JAX)."""
    var = getattr(experts, name)
    value = var[...]
    dense = np.stack([qw.dequantize() for qw in qws]).astype(value.dtype)  # [E, in, out]
    var[...] = jax.device_put(dense, value.sharding)


def quantize_experts(model: nnx.Module, spec: QuantSpec, round_scale) -> dict[str, QuantizedWeight]:
    """RTN / fp8 of every expert of every MoE block (in place: weights become their dequantized values)."""
    results = {}
    for path, experts in iter_experts(model):
        for name in EXPERT_WEIGHTS:
            kernel = getattr(experts, name)[...]  # [E, in, out]
            qws = [round_scale(quantize_kernel(kernel[e], spec)) for e in range(kernel.shape[0])]
            _store(experts, name, qws)
            results.update({expert_key(path, name, e): qw for e, qw in enumerate(qws)})
    return results


class MoEInputTap(SparseMoE):
    """Stands in for a `SparseMoE` during GPTQ calibration (a subclass, so the decoder layer calls it as
    its MoE block): accumulates each expert's input Hessians from the tokens routed to it, then runs the
    wrapped block unchanged."""

    def __init__(self, moe: SparseMoE):  # wraps `moe`; SparseMoE.__init__ would build new weights
        self.moe = moe
        experts, embed, mlp = moe.experts.gate_proj.shape
        self.h_in = nnx.Variable(jnp.zeros((experts, embed, embed), jnp.float32))  # gate/up inputs
        self.h_mid = nnx.Variable(jnp.zeros((experts, mlp, mlp), jnp.float32))  # down inputs
        self.rows = nnx.Variable(jnp.zeros((experts,), jnp.float32))

    def __call__(self, x: jax.Array, mask: jax.Array):
        moe, w = self.moe, self.moe.experts
        flat = x.reshape(-1, x.shape[-1]).astype(moe.dtype)  # [T, embed]
        _, _, chosen = moe._route(flat)
        hit = jnp.max(jax.nn.one_hot(chosen, w.gate_proj.shape[0], dtype=jnp.float32), axis=1)  # [T, E]
        f = flat.astype(jnp.float32)
        gate, up = (w.weight(n, jnp.float32) for n in ("gate_proj", "up_proj"))
        mid = moe.act(jnp.einsum("td,edm->etm", f, gate, precision=HIGHEST)) * jnp.einsum("td,edm->etm", f, up, precision=HIGHEST)
        self.h_in[...] += jnp.einsum("te,td,tf->edf", hit, f, f, precision=HIGHEST)
        self.h_mid[...] += jnp.einsum("te,etm,etn->emn", hit, mid, mid, precision=HIGHEST)
        self.rows[...] += jnp.sum(hit, axis=0)
        return moe(x, mask)

    def quantize(self, path: str, spec: QuantSpec, round_scale) -> dict[str, QuantizedWeight]:
        """GPTQ of every expert with its own Hessian (RTN for an expert no token reached), in place."""
        rows = np.asarray(self.rows[...])
        results = {}
        for name in EXPERT_WEIGHTS:
            hessians = self.h_mid[...] if name == "down_proj" else self.h_in[...]
            kernel = getattr(self.moe.experts, name)[...]  # [E, in, out]
            qws = []
            for e in range(kernel.shape[0]):
                if rows[e] == 0:
                    qws.append(round_scale(quantize_kernel(kernel[e], spec)))
                else:
                    qws.append(round_scale(gptq_quantize_kernel(kernel[e], 2.0 * hessians[e] / rows[e], spec)))
            _store(self.moe.experts, name, qws)
            results.update({expert_key(f"{path}.experts", name, e): qw for e, qw in enumerate(qws)})
        return results
