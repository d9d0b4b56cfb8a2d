"""RTN int4/int8 export in compressed-tensors format, loaded back by transformers + compressed-tensors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import swift_jax
from swift_jax.export import main as export_main
from swift_jax.quant import dequantize, quantize_rtn
from swift_jax.quant.export import pack_int32
from swift_jax.tuners.lora import iter_linears
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)


def test_pack_layout_matches_compressed_tensors():
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    q = np.random.RandomState(0).randint(-8, 8, (6, 64)).astype(np.int8)
    assert np.array_equal(pack_int32(q, 4), pack_to_int32(torch.from_numpy(q), 4).numpy())
    q8 = np.random.RandomState(1).randint(-128, 128, (3, 32)).astype(np.int8)
    assert np.array_equal(pack_int32(q8, 8), pack_to_int32(torch.from_numpy(q8), 8).numpy())


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_export_loads_in_transformers_with_equal_logits(tmp_path, bits):
    path = save_hf_model(build_hf_model("llama"), tmp_path / "base")
    out = tmp_path / "quant"
    export_main(["--model", path, "--quant_method", "rtn", "--quant_bits", str(bits), "--group_size", "32", "--output_dir", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == bits
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    # our reference: the same model with every non-head kernel replaced by its dequantized RTN weights
    ours = swift_jax.load_model(path)
    for name, linear in iter_linears(ours):
        if name != "lm_head":
            q, scale = quantize_rtn(linear.kernel[...].T, bits=bits, group_size=32)
            linear.kernel[...] = dequantize(q, scale).T
    expected = np.asarray(ours(jnp.asarray(IDS)))
    assert np.abs(hf_logits(reloaded, IDS) - expected).max() < 1e-4
    original = hf_logits(build_hf_model("llama"), IDS)
    error = np.abs(expected - original).max()
    assert 0 < error < (0.5 if bits == 4 else 0.05), error  # quantized, yet close to the original
