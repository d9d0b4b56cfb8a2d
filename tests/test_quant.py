"""Quantizers on single kernels: packing matches compressed-tensors, GPTQ beats RTN on calibration data."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

from swift_jax.hf.compressed_tensors import pack_int32, unpack_int32
from swift_jax.quant import QuantSpec, gptq_quantize_kernel, quantize_kernel
from swift_jax.quant.gptq import accumulate_hessian


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_compressed_tensors(bits):
    rng = np.random.default_rng(bits)
    q = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(6, 40)).astype(np.int8)  # 40: not a word multiple
    ours = pack_int32(q, bits)
    theirs = pack_to_int32(torch.from_numpy(q), bits).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(unpack_from_int32(torch.from_numpy(ours), bits, torch.Size(q.shape)).numpy(), q)
    np.testing.assert_array_equal(unpack_int32(ours, bits, q.shape[1]), q)


def _calibration(n=1024, features=128, seed=0):
    """Correlated inputs (as real activations are): GPTQ's compensation has something to exploit."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(features, features)) / np.sqrt(features)
    return (rng.normal(size=(n, features)) @ mix + 0.3 * rng.normal(size=(n, features))).astype(np.float32)


@pytest.mark.parametrize("bits,group_size", [(4, 32), (4, -1), (8, 64)])
def test_gptq_reconstructs_layer_outputs_better_than_rtn(bits, group_size):
    x = _calibration()
    w = np.random.default_rng(1).normal(size=(128, 48)).astype(np.float32)  # [in, out]
    hessian = 2 * accumulate_hessian(jnp.zeros((128, 128)), jnp.asarray(x)) / len(x)
    rtn = quantize_kernel(w, QuantSpec("rtn", bits, group_size))
    gptq = gptq_quantize_kernel(w, hessian, QuantSpec("gptq", bits, group_size))
    assert gptq.qvalue.shape == rtn.qvalue.shape and gptq.scale.shape == rtn.scale.shape
    assert gptq.qvalue.min() >= -(2 ** (bits - 1)) and gptq.qvalue.max() < 2 ** (bits - 1)

    def error(qw):
        return float(np.mean((x @ w - x @ qw.dequantize()) ** 2))

    # Held-out inputs from the same distribution: the gain is not over-fitting to the calibration rows.
    x_test = _calibration(seed=0)[:256] + 0.01 * np.random.default_rng(5).normal(size=(256, 128)).astype(np.float32)
    assert error(gptq) < 0.8 * error(rtn), (error(gptq), error(rtn))
    assert np.mean((x_test @ w - x_test @ gptq.dequantize()) ** 2) < np.mean((x_test @ w - x_test @ rtn.dequantize()) ** 2)


def test_gptq_with_identity_hessian_is_round_to_nearest():
    """Uncorrelated inputs leave nothing to compensate: GPTQ must reduce to RTN (same scales, same values
    except exact half-way ties, which the two roundings may break differently)."""
    w = np.random.default_rng(2).normal(size=(64, 32)).astype(np.float32)
    rtn = quantize_kernel(w, QuantSpec("rtn", 4, 32))
    gptq = gptq_quantize_kernel(w, jnp.eye(64), QuantSpec("gptq", 4, 32))
    np.testing.assert_allclose(gptq.scale, rtn.scale, rtol=1e-6)
    differ = gptq.qvalue != rtn.qvalue
    ratio = np.abs(w / np.repeat(rtn.scale, 32, axis=0))
    assert np.all(np.abs(gptq.qvalue.astype(int) - rtn.qvalue) <= 1)
    assert np.all(np.abs(ratio[differ] % 1 - 0.5) < 1e-4), "values differ away from a rounding tie"


def test_fp8_is_per_output_channel_e4m3():
    w = np.random.default_rng(3).normal(size=(64, 16)).astype(np.float32) * np.linspace(0.1, 10, 16)
    qw = quantize_kernel(w, QuantSpec("fp8", 8))
    assert qw.qvalue.dtype == jnp.float8_e4m3fn and qw.scale.shape == (1, 16)
    np.testing.assert_allclose(np.abs(w).max(0) / qw.scale[0], 448.0, rtol=1e-5)
    np.testing.assert_allclose(qw.dequantize(), w, rtol=0.07, atol=1e-3 * np.abs(w).max())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="awq"), "--quant_method 'awq'"),
        (dict(method="rtn", bits=3), "--quant_bits 3"),
        (dict(method="gptq", group_size=0), "--group_size 0"),
        (dict(method="fp8", bits=4), "--quant_bits 4"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_group_size_must_divide_the_layer():
    with pytest.raises(ValueError, match="mlp.down_proj: input size 96 is not a multiple of --group_size 64"):
        QuantSpec("rtn", 4, 64).groups(96, "model.layers.0.mlp.down_proj")
