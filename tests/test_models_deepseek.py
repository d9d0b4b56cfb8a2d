"""deepseek_v3 (multi-head latent attention + sigmoid group-limited MoE with shared experts): logits parity
with transformers' DeepseekV3ForCausalLM (float32 < 1e-4) plain, right-padded and packed; save_pretrained
round trip; KV-cache greedy decoding; the non-trained router correction bias; LoRA / PEFT target names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import swift_jax
from swift_jax.hf.peft import hf_module_paths
from swift_jax.flops import matmul_params, training_flops
from swift_jax.models.layers import Buffer
from swift_jax.tuners import loraize
from swift_jax.tuners.lora import lora_layers
from test_models import (  # noqa: F401  (collected here with this file's `pair`)
    _ids,
    test_packed_row_matches_each_segment_alone,
    test_plain_rows,
    test_right_padded_batch,
)
from tiny_models import build_hf_model, hf_logits, save_hf_model

TOL = 1e-4
# MLA needs num_key_value_heads == num_attention_heads in transformers (its k/v already have every head).
DEEPSEEK = dict(
    num_key_value_heads=4,
    num_hidden_layers=3,
    n_routed_experts=8,
    moe_intermediate_size=16,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    first_k_dense_replace=1,
)

# (id, overrides). qk_head_dim is 24 in both; v_head_dim 12 (< qk) and 32 (> qk) pad the other way.
CASES = [
    (
        "q_lora-groups4of2-yarn-interleave",
        dict(
            DEEPSEEK,
            q_lora_rank=24,
            v_head_dim=12,
            n_group=4,
            topk_group=2,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            n_shared_experts=1,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                mscale=1.0,
                mscale_all_dim=1.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    (
        "q_direct-groups2of1-bias-no_interleave",
        dict(
            DEEPSEEK,
            q_lora_rank=None,
            v_head_dim=32,
            n_group=2,
            topk_group=1,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            routed_scaling_factor=1.5,
            n_shared_experts=2,
            attention_bias=True,
            rope_interleave=False,
        ),
    ),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(HF reference model, our loaded model, checkpoint path) for one case (as tests/test_models.py)."""
    hf = build_hf_model("deepseek_v3", **request.param[1])
    path = save_hf_model(hf, tmp_path_factory.mktemp(request.param[0]))
    return hf, swift_jax.load_model(path), path


def test_config_and_layer_kinds(pair):
    hf, ours, _ = pair
    c, cfg = hf.config, ours.config
    assert cfg.mla.q_lora_rank == c.q_lora_rank and cfg.mla.v_head_dim == c.v_head_dim
    assert cfg.moe.sparse_layers == (1, 2) and (cfg.moe.n_group, cfg.moe.topk_group) == (c.n_group, c.topk_group)
    assert [type(layer.mlp).__name__ for layer in map(ours.model.layer, range(3))] == ["MLP", "SparseMoE", "SparseMoE"]
    assert abs(cfg.query_scale - hf.model.layers[0].self_attn.scaling) < 1e-7


def test_save_pretrained_round_trips_through_transformers(pair, tmp_path):
    hf, ours, _ = pair
    swift_jax.save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    for a, b in zip(hf.model.layers[1:], reloaded.model.layers[1:]):  # the buffer is written too
        assert torch.equal(a.mlp.gate.e_score_correction_bias, b.mlp.gate.e_score_correction_bias)
    ids = _ids(2, 10, seed=3)
    diff = np.abs(hf_logits(hf, ids) - hf_logits(reloaded, ids)).max()
    print(f"reloaded by transformers: max |logits diff| {diff:.2e}")
    assert diff < TOL, diff
    again = swift_jax.load_model(str(tmp_path))
    assert np.abs(np.asarray(again(jnp.asarray(ids))) - hf_logits(hf, ids)).max() < TOL


def test_kv_cache_greedy_decoding_matches_transformers(pair):
    from swift_jax.generation import GenerationConfig, Generator

    hf, ours, _ = pair
    prompts = [_ids(1, 6, seed=8)[0].tolist(), _ids(1, 4, seed=9)[0].tolist()]  # left-padded together
    outs = Generator(ours).generate_ids(prompts, GenerationConfig(max_new_tokens=8, eos_token_ids=()))
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        assert out.token_ids == ref[0, len(prompt) :].tolist()


def test_correction_bias_is_a_frozen_buffer_that_changes_routing(pair):
    hf, ours, _ = pair
    gate = ours.model.stacks[1].layers[0].mlp.gate  # the MoE layers' routers, stacked
    assert isinstance(gate.e_score_correction_bias, Buffer)
    params = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(ours, nnx.Param))}
    assert not any("e_score_correction_bias" in p for p in params)  # full fine-tuning never updates it
    ids = jnp.asarray(_ids(2, 12))
    before = np.asarray(ours(ids))
    saved = gate.e_score_correction_bias[...]
    gate.e_score_correction_bias[...] = jnp.zeros_like(saved)
    try:  # selection without the bias differs (the test configs' biases are large)
        assert np.abs(np.asarray(ours(ids)) - before).max() > 10 * TOL
    finally:
        gate.e_score_correction_bias[...] = saved


def test_flops_count_mla_and_active_experts(pair):
    _, ours, _ = pair
    cfg = ours.config
    shapes = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(ours, nnx.Param))}
    # every matrix but the embedding lookup (biases and norms are vectors), routed experts at top_k / E
    rank = lambda p, s: len(s) - ("stacks" in p)  # scanned layers stack [layers, ...]
    matmuls = sum(np.prod(s) for p, s in shapes.items() if rank(p, s) == 2 and "embed_tokens" not in p)
    experts = sum(np.prod(s) for p, s in shapes.items() if rank(p, s) == 3)
    assert matmul_params(cfg) == matmuls + experts * cfg.moe.top_k // cfg.moe.num_experts
    assert training_flops(cfg, [12, 5]) > 0


def test_lora_targets_are_the_hf_module_names(pair, tmp_path):
    hf, ours, _ = pair
    names = ["q_a_proj", "q_b_proj"] if hf.config.q_lora_rank else ["q_proj"]
    names += ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    model = swift_jax.load_model(save_hf_model(hf, tmp_path / "base"))
    loraize(model, target_modules=names, rank=4, dropout=0.0, rngs=nnx.Rngs(0))
    adapted = sorted(m for p, _ in lora_layers(model) for m in hf_module_paths(model, p))  # PEFT names
    assert adapted == sorted(f"model.layers.{i}.self_attn.{n}" for i in range(3) for n in names)
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    assert not any("e_score_correction_bias" in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(lora))
    grads = jax.grad(lambda l: jnp.sum(nnx.merge(graphdef, l, rest)(jnp.asarray(_ids(1, 6))) ** 2))(lora)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_peft_adapter_on_latent_attention_matches_peft(tmp_path):
    import peft

    from swift_jax.hf.peft import load_peft_adapter

    overrides = CASES[0][1]
    base = save_hf_model(build_hf_model("deepseek_v3", **overrides), tmp_path / "base")
    torch.manual_seed(1)
    targets = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
    peft_model = peft.get_peft_model(build_hf_model("deepseek_v3", **overrides), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path / "adapter"))
    assert sum(len(hf_module_paths(ours, p)) for p, _ in lora_layers(ours)) == 3 * len(targets)
    ids = _ids(2, 10, seed=9)
    diff = np.abs(hf_logits(peft_model, ids) - np.asarray(ours(jnp.asarray(ids)))).max()
    print(f"peft adapter: max |logits diff| {diff:.2e}")
    assert diff < TOL, diff


def test_full_fine_tuning_step_matches_transformers_loss_and_keeps_the_bias(tmp_path):
    import optax

    from swift_jax.trainer.method import LanguageModeling
    from swift_jax.trainer.step import TrainState, make_train_step, router_aux_coef, split_model

    hf = build_hf_model("deepseek_v3", **CASES[0][1])
    model = swift_jax.load_model(save_hf_model(hf, tmp_path))
    assert router_aux_coef(model.config) == 0.0  # transformers adds no load-balancing loss for deepseek_v3
    ids = _ids(2, 12, seed=5)
    with torch.no_grad():
        ref = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long)).loss
    bias = np.asarray(model.model.layer(1).mlp.gate.e_score_correction_bias[...])
    positions = np.broadcast_to(np.arange(12, dtype=np.int32), ids.shape)
    batch = dict(input_ids=ids, labels=ids, segment_ids=np.ones_like(ids), positions=positions)
    optimizer = optax.sgd(0.1)
    graphdef, params, rng, frozen = split_model(model, nnx.Param)
    assert any("e_score_correction_bias" in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen))
    before = np.asarray(params["model"]["stacks"][1]["layers"][0]["mlp"]["experts"]["gate_proj"][...])
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
    batches = jax.tree.map(lambda x: jnp.asarray(x)[None], batch)
    state, metrics = make_train_step(graphdef, optimizer, LanguageModeling())(state, frozen, None, batches)
    assert abs(float(metrics["loss"]) - float(ref)) < 1e-5, (float(metrics["loss"]), float(ref))
    assert np.abs(np.asarray(state.params["model"]["stacks"][1]["layers"][0]["mlp"]["experts"]["gate_proj"][...]) - before).max() > 0
    trained = nnx.merge(graphdef, state.params, state.rng, frozen)
    np.testing.assert_array_equal(np.asarray(trained.model.layer(1).mlp.gate.e_score_correction_bias[...]), bias)


def test_bfloat16_load_runs_close_to_float32(tmp_path):
    hf = build_hf_model("deepseek_v3", **CASES[1][1])
    path = save_hf_model(hf, tmp_path)
    ids = jnp.asarray(_ids(2, 10, seed=6))
    ref = np.asarray(swift_jax.load_model(path)(ids))
    model = swift_jax.load_model(path, dtype="bfloat16")
    assert model.model.layer(1).mlp.gate.e_score_correction_bias[...].dtype == jnp.float32
    got = np.asarray(model(ids).astype(jnp.float32))
    assert np.isfinite(got).all() and np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 0.02


def test_expert_and_fsdp_sharded_mesh_keeps_logits(tmp_path):
    from jax.sharding import PartitionSpec as P

    from swift_jax.parallel import make_mesh

    hf = build_hf_model("deepseek_v3", **CASES[0][1])
    path = save_hf_model(hf, tmp_path)
    mesh = make_mesh(expert_parallel_size=4, fsdp_size=2)
    model = swift_jax.load_model(path, mesh=mesh)
    layer = model.model.stacks[1].layers[0]  # the MoE layers, stacked
    assert layer.mlp.experts.gate_proj[...].sharding.spec == P(None, "expert", "fsdp", None)
    assert layer.self_attn.kv_a_proj_with_mqa.kernel[...].sharding.spec == P(None, "fsdp", None)
    ids = _ids(4, 10, seed=7)
    with jax.set_mesh(mesh):
        sharded = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    assert np.abs(sharded - hf_logits(hf, ids)).max() < TOL
