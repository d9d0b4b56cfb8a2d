"""The LoRA update's hand-written backward equals JAX autodiff of the same product, and only CPU uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swift_jax.tuners.lora import low_rank_product, low_rank_product_cpu


def _autodiff_reference(x, a, b, scale):
    return ((x @ a) @ b) * scale


@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 7)])
def test_low_rank_product_gradients_match_autodiff(x_shape):
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], x_shape, jnp.float32)
    a = jax.random.normal(keys[1], (7, 3), jnp.float32)
    b = jax.random.normal(keys[2], (3, 11), jnp.float32)
    cotangent = jax.random.normal(keys[3], x_shape[:-1] + (11,), jnp.float32)

    def loss(fn):
        # A nonlinear head so every gradient depends on the cotangent's layout, not just its sum.
        return lambda x, a, b: jnp.sum(jnp.sin(fn(x, a, b, 0.5)) * cotangent)

    ours = jax.jit(jax.value_and_grad(loss(low_rank_product_cpu), argnums=(0, 1, 2)))(x, a, b)
    reference = jax.value_and_grad(loss(_autodiff_reference), argnums=(0, 1, 2))(x, a, b)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5, atol=1e-5)
    for got, want, name in zip(ours[1], reference[1], ("x", "lora_a", "lora_b")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"gradient of {name}")


@pytest.mark.parametrize("platform,custom", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_hand_written_backward_only_on_cpu(platform, custom):
    """The product dispatches by platform: the custom backward on CPU, autodiff on GPU/TPU, same gradients."""
    keys = jax.random.split(jax.random.key(1), 3)
    x, a, b = (jax.random.normal(k, s) for k, s in zip(keys, ((2, 3, 7), (7, 3), (3, 11))))
    loss = lambda x, a, b: jnp.sum(jnp.sin(low_rank_product(x, a, b, 0.5, platform=platform)))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, a, b))
    assert ("optimization_barrier" in jaxpr) == custom  # the hand-written backward's transposes
    got = jax.grad(loss, argnums=(0, 1, 2))(x, a, b)
    want = jax.grad(lambda x, a, b: jnp.sum(jnp.sin(_autodiff_reference(x, a, b, 0.5))), argnums=(0, 1, 2))(x, a, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
