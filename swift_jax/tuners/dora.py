"""DoRA (weight-decomposed LoRA, Liu et al. 2024) as PEFT computes it (`use_dora=True`).

The adapted weight is `m * (W + s A B) / ||W + s A B||`, the norm taken per output feature over the input
axis. As in PEFT the norm is detached (no gradient flows through it: the paper's section 4.3), so the layer
computes `y + (m / norm - 1) * (dropout(x) @ W) + (m / norm) * s (dropout(x) @ A) @ B` without forming the
adapted weight for the matmul. `lora_magnitude_vector` (`m`, `[out]`) starts at `||W||` so a fresh adapter
leaves the output unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .lora import LoRA, low_rank_product


def column_norm(kernel: jax.Array) -> jax.Array:
    """Norm of each output feature's weights: kernel `[..., in, out]` -> `[..., out]` (float32)."""
    return jnp.sqrt(jnp.sum(jnp.square(kernel.astype(jnp.float32)), axis=-2))


class DoRA(LoRA):
    """A LoRA adapter plus DoRA's magnitude vector `[out]` (an `nnx.LoRAParam`, trained with A and B)."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        axes = self.lora_b.get_metadata()["logical_axes"]
        dtype = self.lora_b.get_value().dtype
        self.magnitude = nnx.LoRAParam(jnp.ones((out_features,), dtype), logical_axes=(axes[1],))

    def init_magnitude(self, weight) -> None:
        """Set the magnitude to `||W + s A B||` (`weight()`: `[in, out]` or `[layers, in, out]`), as PEFT, so the
        adapted layer starts equal to the base whatever the initial A and B (PiSSA, `false`)."""
        self.magnitude.set_value(self._weight_norm(weight()).astype(self.magnitude.get_value().dtype))

    def _weight_norm(self, kernel: jax.Array) -> jax.Array:
        """`||W + s A B||` per output feature, detached (PEFT: "see section 4.3 of the DoRA paper")."""
        return jax.lax.stop_gradient(column_norm(kernel.astype(jnp.float32) + self.delta()))

    def adapt(self, x: jax.Array, y: jax.Array, weight) -> jax.Array:
        kernel = weight()  # [in, out] in the compute dtype
        base = y  # x @ W, without the bias
        if self.dropout is not None:
            x = self.dropout(x)
            base = x @ kernel  # DoRA rescales the base output of the dropped-out input, as PEFT
        a, b = self.lora_a[...].astype(self.dtype), self.lora_b[...].astype(self.dtype)
        ratio = (self.magnitude[...].astype(jnp.float32) / self._weight_norm(kernel)).astype(self.dtype)  # [out]
        return y + (ratio - 1) * base + ratio * low_rank_product(x, a, b, self.scale)

    def merged(self, kernel: jax.Array) -> jax.Array:
        adapted = kernel + self.delta()  # [..., in, out] float32
        return adapted * (self.magnitude[...].astype(jnp.float32) / column_norm(adapted))[..., None, :]

