"""LoRA on MoE experts (`--target_parameters`, PEFT's ParamWrapper) and QLoRA of the experts: logits and
gradients against the real `peft` on transformers' fused expert modules (float32 < 1e-4), PEFT files in
and out, exact merge, the grouped-matmul update against the dense reference, quantized experts against
their dequantized weights."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import swift_jax
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.hf.peft_experts import to_peft
from swift_jax.models.moe import LowRank, experts_dense, experts_ragged, route
from swift_jax.tuners import adapters_disabled, merge_lora
from swift_jax.tuners.experts import loraize_experts
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)
COTANGENT = np.random.RandomState(1).randn(2, 10, 128).astype(np.float32)
MODELS = {
    "qwen3_moe": dict(num_experts=4, moe_intermediate_size=16, num_experts_per_tok=2),
    "mixtral": dict(num_local_experts=4, intermediate_size=24, num_experts_per_tok=2),
}
BOTH = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@pytest.fixture(scope="module", params=sorted(MODELS))
def moe(request, tmp_path_factory):
    """(model_type, checkpoint path) of a tiny MoE model, both layers sparse (one scanned stack)."""
    model_type = request.param
    return model_type, save_hf_model(build_hf_model(model_type, **MODELS[model_type]), tmp_path_factory.mktemp(model_type))


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory):
    return save_hf_model(build_hf_model("qwen3_moe", **MODELS["qwen3_moe"]), tmp_path_factory.mktemp("qwen3_moe"))


def _perturb(model, seed=0, size=0.05):
    key = jax.random.key(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        key, sub = jax.random.split(key)
        var[...] = var[...] + size * jax.random.normal(sub, var.shape, var.dtype)


def test_expert_lora_matches_peft_logits_and_gradients(moe, tmp_path):
    model_type, base = moe
    ours = swift_jax.load_model(base)
    loraize_experts(ours, BOTH, rank=2, alpha=4, rngs=nnx.Rngs(0))
    _perturb(ours)
    got = np.asarray(ours(jnp.asarray(IDS)))
    with adapters_disabled():
        plain = np.asarray(ours(jnp.asarray(IDS)))
    save_peft_adapter(ours, tmp_path, base_model_name_or_path=base)
    hf_base = build_hf_model(model_type, **MODELS[model_type])
    assert np.abs(hf_logits(hf_base, IDS) - plain).max() < 1e-4
    peft_model = peft.PeftModel.from_pretrained(hf_base, tmp_path, is_trainable=True).eval()
    assert sorted(peft_model.peft_config["default"].target_parameters) == sorted(BOTH)
    assert np.abs(hf_logits(peft_model, IDS) - got).max() < 1e-4
    assert np.abs(plain - got).max() > 1e-2  # the adapter matters

    graphdef, params, rest = nnx.split(ours, nnx.LoRAParam, ...)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(jnp.asarray(IDS)) * COTANGENT)
    grads = jax.grad(loss)(params)["model"]["stacks"][0]["layers"][0]["mlp"]["experts"]["lora"]
    peft_model.zero_grad()
    (peft_model(input_ids=torch.as_tensor(IDS, dtype=torch.long)).logits * torch.as_tensor(COTANGENT)).sum().backward()
    theirs = {n: p.grad.numpy() for n, p in peft_model.named_parameters() if p.grad is not None}
    for layer in range(2):
        for param, where in (("gate_up_proj", "experts.base_layer"), ("down_proj", "experts")):
            g = grads[param]
            want_a, want_b = to_peft(np.asarray(g["lora_a"][...][layer]), np.asarray(g["lora_b"][...][layer]))
            for kind, ours_g in (("A", want_a), ("B", want_b)):
                want = theirs[f"base_model.model.model.layers.{layer}.mlp.{where}.lora_{kind}.default.weight"]
                assert np.abs(ours_g - want).max() < 1e-4 * max(1.0, np.abs(want).max()), (layer, param, kind)

    # --adapters reads it back; merging is exact
    loaded = load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
    assert np.abs(np.asarray(loaded(jnp.asarray(IDS))) - got).max() < 1e-6
    merged = merge_lora(loaded)
    assert merged.model.stacks[0].layers[0].mlp.experts.lora is None
    assert np.abs(np.asarray(merged(jnp.asarray(IDS))) - got).max() < 1e-5


def test_adapter_written_by_peft_with_target_parameters_loads_and_round_trips(qwen3_moe, tmp_path):
    """PEFT's own file, with expert parameters adapted in some layers only (different wrapper nesting per
    layer) beside a target module: we compute its logits and write the same tensors back."""
    kw, base = MODELS["qwen3_moe"], qwen3_moe
    torch.manual_seed(2)
    config = peft.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False, lora_dropout=0.0,
                             target_parameters=["mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"])
    peft_model = peft.get_peft_model(build_hf_model("qwen3_moe", **kw), config).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path / "peft"))
    assert np.abs(hf_logits(peft_model, IDS) - np.asarray(ours(jnp.asarray(IDS)))).max() < 1e-4
    save_peft_adapter(ours, tmp_path / "again", base_model_name_or_path=base)
    theirs, again = load_file(tmp_path / "peft" / "adapter_model.safetensors"), load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert sorted(theirs) == sorted(again)
    assert max(np.abs(theirs[k] - again[k]).max() for k in theirs) < 1e-7


def test_grouped_matmul_update_equals_the_dense_reference():
    r = np.random.RandomState(0)
    tokens, embed, mlp, experts, rank = 29, 16, 24, 8, 3
    x = jnp.asarray(r.randn(tokens, embed), jnp.float32)
    gate, up = (jnp.asarray(r.randn(experts, embed, mlp) * 0.3, jnp.float32) for _ in range(2))
    down = jnp.asarray(r.randn(experts, mlp, embed) * 0.3, jnp.float32)
    low = lambda i, o: LowRank(jnp.asarray(r.randn(experts, i, rank) * 0.3, jnp.float32), jnp.asarray(r.randn(experts, rank, o) * 0.3, jnp.float32), 0.5)
    updates = {"gate": low(embed, mlp), "up": low(embed, mlp), "down": low(mlp, embed)}
    _, weights, idx = route(jnp.asarray(r.randn(tokens, experts), jnp.float32), 2, norm_topk_prob=True)

    def loss(fn, updates):
        return jnp.sum(fn(x, idx, weights, gate, up, down, jax.nn.silu, updates) ** 2)

    np.testing.assert_allclose(loss(experts_ragged, updates), loss(experts_dense, updates), rtol=1e-5)
    g_ragged, g_dense = (jax.jit(jax.grad(lambda u, fn=fn: loss(fn, u)))(updates) for fn in (experts_ragged, experts_dense))
    for a, b in zip(jax.tree.leaves(g_ragged), jax.tree.leaves(g_dense)):  # A, B (and the scale's)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_qlora_experts_equal_their_dequantized_weights_and_train(qwen3_moe):
    import qwix

    from swift_jax.tuners.qlora import quantize_base

    base = qwen3_moe
    model = quantize_base(swift_jax.load_model(base), bits=4, tile_size=16)
    experts = model.model.stacks[0].layers[0].mlp.experts
    assert isinstance(experts.gate_proj.get_value(), qwix.QArray)
    reference = swift_jax.load_model(base)  # the same model with the float dequantized weights
    for (_, q), (_, f) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(reference, nnx.Param))):
        value = q.get_value()
        f.set_value(value if isinstance(value, jax.Array) else qwix.dequantize(value))
    float_logits = np.asarray(swift_jax.load_model(base)(jnp.asarray(IDS)))
    got = np.asarray(model(jnp.asarray(IDS)))
    assert np.abs(got - np.asarray(reference(jnp.asarray(IDS)))).max() < 1e-5
    assert 0 < np.abs(got - float_logits).max() < 0.5  # nf4 changes the logits, a little

    loraize_experts(model, ["experts.down_proj"], rank=2, alpha=4, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam, ...)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(jnp.asarray(IDS)) * COTANGENT))(params)
    g = grads["model"]["stacks"][0]["layers"][0]["mlp"]["experts"]["lora"]["down_proj"]["lora_b"][...]
    assert np.abs(np.asarray(g)).max() > 0 and np.isfinite(np.asarray(g)).all()


def test_target_parameters_errors_name_the_flag(qwen3_moe):
    base = qwen3_moe
    with pytest.raises(ValueError, match=r"--target_parameters \['mlp.experts.up_proj'\] match no parameter"):
        loraize_experts(swift_jax.load_model(base), ["mlp.experts.up_proj"], rank=2, alpha=4, rngs=nnx.Rngs(0))


def test_qlora_training_run_with_target_parameters_trains_the_experts(tmp_path):
    """`--tuner_type qlora --target_parameters ...` on a tiny qwen3_moe: the experts are stored quantized, their
    adapters train, and the checkpoint is a PEFT adapter with target_parameters."""
    import json
    import os
    import shutil

    from safetensors import safe_open

    from test_trainer import QUICK, args_of
    from swift_jax.trainer.trainer import Trainer

    model_dir = tmp_path / "moe"
    shutil.copytree(QUICK, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_hidden_layers=2, layer_types=["full_attention"] * 2,
                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, head_dim=32)
    (model_dir / "config.json").write_text(json.dumps(config))
    flags = ["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--save_steps", "2",
             "--tuner_type", "qlora", "--target_modules", "q_proj", "--target_parameters", *BOTH]
    with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("unused",))):
        result = Trainer(args_of(*flags)).train()
    folder = os.path.join(result["run_dir"], "checkpoint-2")
    saved = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    assert sorted(saved["target_parameters"]) == sorted(BOTH) and saved["target_modules"] == ["q_proj"]
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "np") as f:
        b = f.get_tensor("base_model.model.model.layers.1.mlp.experts.lora_B.weight")  # down_proj [embed, r x E]
    assert b.shape == (128, 4 * 4) and np.abs(b).max() > 0  # trained away from its zero start
    assert np.isfinite(result["loss"])
