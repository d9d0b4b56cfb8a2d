"""Quantized exports (RTN/GPTQ int4/int8, fp8) in compressed-tensors format, loaded back by transformers +
compressed-tensors on CPU, with logits equal to our own quantized forward (float32, < 1e-4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import swift_jax
from swift_jax.export import main as export_main
from swift_jax.hf.compressed_tensors import unpack_int32
from swift_jax.quant import QuantSpec
from swift_jax.quant.export import save_quantized
from swift_jax.data.frontend import chat_encoder
from swift_jax.quant.calibration import calibration_rows
from safetensors import safe_open
from safetensors.numpy import load_file
from infer_fixtures import build_chat_model
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)
TOL = 1e-4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny llama folder (hidden 64, mlp 96: group sizes 32 divide every layer) and its logits."""
    hf = build_hf_model("llama")
    return save_hf_model(hf, tmp_path_factory.mktemp("base")), hf_logits(hf, IDS)


@pytest.mark.parametrize(
    "spec,max_error",
    [
        (QuantSpec("rtn", 4, 32), 0.5),
        (QuantSpec("rtn", 8, -1), 0.05),
        (QuantSpec("gptq", 4, 32), 0.5),
        (QuantSpec("fp8", 8), 0.1),
    ],
    ids=lambda s: f"{s.method}{s.bits}-g{s.group_size}" if isinstance(s, QuantSpec) else str(s),
)
def test_export_loads_in_transformers_with_our_quantized_logits(base, tmp_path, spec, max_error):
    path, original = base
    ours = swift_jax.load_model(path)
    calibration = np.random.RandomState(1).randint(0, 128, (16, 32)) if spec.method == "gptq" else None
    quantized = save_quantized(ours, str(tmp_path), spec, calibration=calibration)
    assert len(quantized) == 2 * 7  # every linear of both layers, not lm_head
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["format"] == ("float-quantized" if spec.is_float else "pack-quantized") and config["ignore"] == ["lm_head"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = np.asarray(ours(jnp.asarray(IDS)))  # our forward with the dequantized kernels
    assert np.abs(hf_logits(reloaded, IDS) - expected).max() < TOL
    error = np.abs(expected - original).max()
    assert 0 < error < max_error, error  # quantized, yet close to the original


def test_int4_folder_holds_packed_codes(base, tmp_path):
    path, _ = base
    model = swift_jax.load_model(path)
    kernel = np.asarray(model.model.layer(0).mlp.down_proj.kernel[...])  # [96, 64]
    export_main(["--model", path, "--quant_method", "rtn", "--quant_bits", "4", "--group_size", "32", "--output_dir", str(tmp_path)])
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    assert tensors[f"{name}.weight_packed"].shape == (64, 96 * 4 // 32) and tensors[f"{name}.weight_packed"].dtype == np.int32
    assert tensors[f"{name}.weight_scale"].shape == (64, 3) and list(tensors[f"{name}.weight_shape"]) == [64, 96]
    assert "lm_head.weight" in tensors and "model.layers.0.mlp.down_proj.weight" not in tensors
    codes = unpack_int32(tensors[f"{name}.weight_packed"], 4, 96)  # [out, in]
    dequantized = codes.reshape(64, 3, 32) * tensors[f"{name}.weight_scale"][:, :, None]
    np.testing.assert_allclose(dequantized.reshape(64, 96).T, kernel, atol=np.abs(kernel).max() / 7)


def test_gptq_export_from_the_command_line(tmp_path):
    """`--quant_method gptq --dataset chat.jsonl` end to end, with the model's tokenizer and chat template."""
    path = build_chat_model(tmp_path / "chat")
    rows = [{"messages": [{"role": "user", "content": f"what is {i} times 7?"}, {"role": "assistant", "content": f"It is {7 * i}."}]} for i in range(60)]
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = calibration_rows(chat_encoder(swift_jax.load_tokenizer(path)), [str(calib)], n_samples=8, seq_len=32)
    assert ids.shape == (8, 32) and ids.max() < 320
    out = tmp_path / "gptq"
    with pytest.raises(ValueError, match="--quant_method gptq needs calibration data"):
        export_main(["--model", path, "--quant_method", "gptq", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="not a multiple of --group_size 128"):
        export_main(["--model", path, "--quant_method", "rtn", "--output_dir", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="--quant_bits 3"):
        export_main(["--model", path, "--quant_method", "rtn", "--quant_bits", "3", "--output_dir", str(tmp_path / "bad")])
    export_main(
        ["--model", path, "--quant_method", "gptq", "--group_size", "32", "--dataset", str(calib),
         "--quant_n_samples", "8", "--max_length", "32", "--output_dir", str(out)]
    )
    assert (out / "tokenizer.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    original = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    chat_ids = IDS + 100
    assert 0 < np.abs(hf_logits(reloaded, chat_ids) - hf_logits(original, chat_ids)).max() < 0.5


def test_adapter_is_merged_before_quantizing(base, tmp_path):
    """`--adapters CKPT --quant_method rtn`: the LoRA update is folded in first, then quantized."""
    import jax
    from flax import nnx

    from swift_jax.hf.peft import save_peft_adapter
    from swift_jax.quant import quantize_model
    from swift_jax.tuners import loraize, merge_lora

    path, original = base
    model = loraize(swift_jax.load_model(path), rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0))
    adapters = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.LoRAParam)]
    for i, var in enumerate(adapters):
        var[...] = 0.05 * jax.random.normal(jax.random.key(i), var.shape, var.dtype)
    adapter = str(tmp_path / "checkpoint_5")
    save_peft_adapter(model, adapter, base_model_name_or_path=path)
    merge_lora(model)
    quantize_model(model, QuantSpec("rtn", 8, 32))
    expected = np.asarray(model(jnp.asarray(IDS)))
    out = tmp_path / "int8"
    export_main(["--adapters", adapter, "--quant_method", "rtn", "--quant_bits", "8", "--group_size", "32", "--output_dir", str(out)])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert np.abs(hf_logits(reloaded, IDS) - expected).max() < TOL
    assert np.abs(expected - original).max() > 0.01  # the adapter's update is really in the export


MOE = {"qwen3_moe": dict(num_experts=4, moe_intermediate_size=32, num_experts_per_tok=2),
       "mixtral": dict(num_local_experts=4, intermediate_size=32, num_experts_per_tok=2),
       "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2,
                           topk_group=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                           first_k_dense_replace=1)}


@pytest.mark.parametrize("model_type,spec,max_error", [
    ("qwen3_moe", QuantSpec("gptq", 4, 32), 0.6),
    ("deepseek_v3", QuantSpec("rtn", 8, 16), 0.2),
    ("mixtral", QuantSpec("fp8", 8), 0.2),
], ids=["qwen3_moe-gptq4", "deepseek_v3-rtn8", "mixtral-fp8"])
def test_moe_export_quantizes_every_expert_and_loads_in_transformers(tmp_path, model_type, spec, max_error):
    """Each expert is quantized as HF's per-expert tensors; transformers dequantizes and fuses them into its
    `gate_up_proj` / `down_proj` and computes our quantized model's logits (float32 < 1e-4). deepseek_v3's
    router correction bias (a buffer, not a parameter) is written too."""
    hf = build_hf_model(model_type, **MOE[model_type])
    ours = swift_jax.load_model(save_hf_model(hf, tmp_path / "base"))
    calibration = np.random.RandomState(1).randint(0, 128, (16, 32)) if spec.method == "gptq" else None
    quantized = save_quantized(ours, str(tmp_path / "out"), spec, calibration=calibration)
    sparse_layers = 1 if model_type == "deepseek_v3" else 2  # deepseek_v3: layer 0 is dense
    assert sum("[" in key for key in quantized) == sparse_layers * 3 * 4  # gate/up/down of each of 4 experts
    with safe_open(tmp_path / "out" / "model.safetensors", "np") as f:  # names only (numpy has no float8)
        names = set(f.keys())
    expert = "model.layers.1.block_sparse_moe.experts.3.w2" if model_type == "mixtral" else "model.layers.1.mlp.experts.3.down_proj"
    assert f"{expert}.{'weight' if spec.is_float else 'weight_packed'}" in names and f"{expert}.weight_scale" in names
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    expected = np.asarray(ours(jnp.asarray(IDS)))
    assert np.abs(hf_logits(reloaded, IDS) - expected).max() < TOL
    assert 0 < np.abs(expected - hf_logits(hf, IDS)).max() < max_error

def test_gptq_expert_hessians_come_from_the_tokens_routed_to_each_expert(tmp_path):
    """The calibration tap's per-expert Hessians equal `X_e^T X_e` (gate/up) and `H_e^T H_e` (down) over exactly
    the tokens the router sends to expert e, and GPTQ with them beats RTN on that objective."""
    from swift_jax.quant.experts import MoEInputTap, expert_key
    from swift_jax.quant.rtn import quantize_kernel

    hf = build_hf_model("qwen3_moe", **MOE["qwen3_moe"])
    moe = swift_jax.load_model(save_hf_model(hf, tmp_path), scan_layers=False).model.layers[0].mlp
    x = jnp.asarray(np.random.RandomState(2).randn(2, 16, 64), jnp.float32)
    gate, up, down = (np.array(getattr(moe.experts, n)[...]) for n in ("gate_proj", "up_proj", "down_proj"))
    tap = MoEInputTap(moe)
    tap(x, jnp.ones((2, 16), bool))
    flat = np.asarray(x).reshape(32, 64)
    chosen = np.asarray(moe._route(jnp.asarray(flat))[2])  # [T, k]
    for e in range(4):
        rows = flat[(chosen == e).any(axis=1)]
        mid = np.asarray(jax.nn.silu(rows @ gate[e])) * (rows @ up[e])
        np.testing.assert_allclose(np.asarray(tap.h_in[...][e]), rows.T @ rows, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(tap.h_mid[...][e]), mid.T @ mid, rtol=1e-4, atol=1e-4)
    hessians = {"gate_proj": np.array(tap.h_in[...]), "down_proj": np.array(tap.h_mid[...])}
    spec = QuantSpec("gptq", 4, 32)
    results = tap.quantize("model.layers.0.mlp", spec, lambda qw: qw)
    for name, kernels in (("gate_proj", gate), ("down_proj", down)):
        for e in range(4):
            loss = lambda q: np.trace((kernels[e] - q).T @ hessians[name][e] @ (kernels[e] - q))
            gptq = loss(results[expert_key("model.layers.0.mlp.experts", name, e)].dequantize())
            assert gptq < loss(quantize_kernel(kernels[e], spec).dequantize()), (name, e)
