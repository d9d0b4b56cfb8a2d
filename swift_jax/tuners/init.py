"""`--init_weights`: how a new LoRA adapter starts (PEFT's `init_lora_weights`, ms-swift's names).

`true` (kaiming-uniform A, zero B) and `gaussian` (A ~ N(0, 1/r^2), zero B) leave the model unchanged;
`false` draws B too (a random, non-identity adapter, for tests). `pissa` (full SVD), `pissa_niter_N`
(randomised SVD with N subspace iterations) and `olora` (QR) move the kernel's principal part into the
adapter and leave the residual `W - s A B` in the kernel, so the initial model equals the base up to
rounding. Their initial adapters are kept (`initial_a`, `initial_b`, frozen) so a checkpoint can write
PEFT's converted rank-2r LoRA, which applies to the original base (hf/peft.py).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

PLAIN = ("true", "false", "gaussian")
_FROM_KERNEL = re.compile(r"pissa(_niter_(\d+))?|olora")


class InitialAdapter(nnx.Variable):
    """The adapter's initial A or B (PiSSA / OLoRA): frozen, read when exporting the converted LoRA."""


def check_init_weights(value: str | bool) -> str:
    """The canonical `--init_weights` name, or an error listing the supported ones."""
    name = str(value).lower()
    if name in PLAIN or _FROM_KERNEL.fullmatch(name):
        return name
    raise ValueError(f"--init_weights {value!r}: supported are true, false, gaussian, pissa, pissa_niter_N (e.g. pissa_niter_16), olora")


def uses_kernel(init: str) -> bool:
    """True for the initialisations that rewrite the base kernel (PiSSA, OLoRA)."""
    return bool(_FROM_KERNEL.fullmatch(init))


def svd_lowrank(m: jax.Array, rank: int, niter: int, key: jax.Array):
    """Randomised truncated SVD (Halko et al., as torch.svd_lowrank): m `[..., rows, cols]` ->
    u `[..., rows, rank]`, s `[..., rank]`, vt `[..., rank, cols]`."""
    mt = lambda t: jnp.swapaxes(t, -1, -2)
    orth = lambda t: jnp.linalg.qr(t)[0]
    q = orth(m @ jax.random.normal(key, (*m.shape[:-2], m.shape[-1], rank), m.dtype))
    for _ in range(niter):
        q = orth(m @ orth(mt(m) @ q))
    u, s, vt = jnp.linalg.svd(mt(q) @ m, full_matrices=False)  # [..., rank, cols] factored
    return q @ u, s, vt


def principal_factors(kernel: jax.Array, rank: int, scale: float, init: str) -> tuple[jax.Array, jax.Array]:
    """(A `[..., in, r]`, B `[..., r, out]`) in float32 for a kernel `[..., in, out]`, as PEFT's
    pissa_init / olora_init compute them on the transposed `[out, in]` weight."""
    w = jnp.swapaxes(kernel.astype(jnp.float32), -1, -2)  # [..., out, in]: PEFT's layout
    if init == "olora":
        q, r = jnp.linalg.qr(w)  # [..., out, k], [..., k, in]
        a_hf, b_hf = r[..., :rank, :], q[..., :, :rank]
    else:
        niter = _FROM_KERNEL.fullmatch(init).group(2)
        if niter is None:
            v, s, uh = jnp.linalg.svd(w, full_matrices=False)
            v, s, uh = v[..., :rank], s[..., :rank], uh[..., :rank, :]
        else:
            v, s, uh = svd_lowrank(w, rank, int(niter), jax.random.key(0))
        root = jnp.sqrt(s / scale)  # [..., r]
        a_hf, b_hf = root[..., :, None] * uh, v * root[..., None, :]  # [..., r, in], [..., out, r]
    return jnp.swapaxes(a_hf, -1, -2), jnp.swapaxes(b_hf, -1, -2)


def initialize_from_kernel(linear, init: str) -> None:
    """PiSSA / OLoRA / `false` for one adapted Linear (in place; other inits are done at construction)."""
    lora = linear.lora
    if init == "false":  # PEFT leaves B at nn.Linear's default: kaiming-uniform, bound 1/sqrt(rank)
        b = lora.lora_b.get_value()
        bound = 1.0 / b.shape[-2] ** 0.5
        lora.lora_b.set_value(jax.random.uniform(jax.random.key(1), b.shape, b.dtype, -bound, bound))
        return
    if not uses_kernel(init):
        return
    kernel = linear.kernel.get_value()
    if not isinstance(kernel, jax.Array):
        raise ValueError(f"--init_weights {init} needs a float base kernel; initialise on the float model, then quantize the residual")
    rank = lora.lora_a.shape[-1]
    a, b = principal_factors(kernel, rank, lora.scale, init)
    linear.kernel.set_value((kernel.astype(jnp.float32) - lora.scale * (a @ b)).astype(kernel.dtype))
    for name, value in (("a", a), ("b", b)):
        var = getattr(lora, f"lora_{name}")
        var.set_value(value.astype(var.get_value().dtype))
        # A copy, not the trained variable's buffer: the train step donates the adapters, which would delete it.
        initial = jnp.copy(var.get_value())
        setattr(lora, f"initial_{name}", InitialAdapter(initial, logical_axes=var.get_metadata()["logical_axes"]))
