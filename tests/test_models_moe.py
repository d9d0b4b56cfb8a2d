"""Mixture of Experts (qwen3_moe, mixtral): logits parity with transformers (float32 < 1e-4), plain and
packed, several top-k / norm_topk_prob / mlp_only_layers settings; save_pretrained round trip; expert
parallelism; ragged_dot experts vs the dense reference; router load-balancing loss vs transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

import swift_jax
from swift_jax.hf.peft import hf_module_paths
from swift_jax.models.moe import experts_dense, experts_ragged, route
from swift_jax.parallel import make_mesh
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.step import TrainState, make_train_step, router_aux_coef, split_model
from swift_jax.tuners import loraize
from swift_jax.tuners.lora import lora_layers, merge_lora
from test_models import (  # noqa: F401  (collected here with this file's `pair`)
    _ids,
    test_packed_row_matches_each_segment_alone,
    test_plain_rows,
    test_right_padded_batch,
)
from tiny_models import build_hf_model, hf_logits, save_hf_model

TOL = 1e-4
QWEN3_MOE = dict(num_experts=8, moe_intermediate_size=32)
MIXTRAL = dict(num_local_experts=8, intermediate_size=48)

# (id, model_type, overrides): top-k 1/2/4 of 8 experts, norm_topk_prob on/off, dense layers, windows.
CASES = [
    ("qwen3_moe-top1", "qwen3_moe", dict(QWEN3_MOE, num_experts_per_tok=1, norm_topk_prob=False)),
    ("qwen3_moe-top2-norm-mlp_only", "qwen3_moe", dict(QWEN3_MOE, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0])),
    (
        "qwen3_moe-top4-sparse_step2-tied",
        "qwen3_moe",
        dict(QWEN3_MOE, num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=2, num_hidden_layers=3, tie_word_embeddings=True),
    ),
    ("mixtral-top1", "mixtral", dict(MIXTRAL, num_experts_per_tok=1)),
    ("mixtral-top2-window", "mixtral", dict(MIXTRAL, num_experts_per_tok=2, sliding_window=5)),
    ("mixtral-top4", "mixtral", dict(MIXTRAL, num_experts_per_tok=4)),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request, tmp_path_factory):
    """(HF reference model, our loaded model, checkpoint path) for one case (as tests/test_models.py)."""
    _, model_type, overrides = request.param
    hf = build_hf_model(model_type, **overrides)
    path = save_hf_model(hf, tmp_path_factory.mktemp(request.param[0]))
    return hf, swift_jax.load_model(path), path


def test_config_reads_the_moe_fields(pair):
    hf, ours, _ = pair
    moe, c = ours.config.moe, hf.config
    assert (moe.num_experts, moe.top_k) == (8, c.num_experts_per_tok)
    if c.model_type == "mixtral":
        assert moe.norm_topk_prob and moe.sparse_layers == tuple(range(c.num_hidden_layers))
    else:
        assert moe.norm_topk_prob == c.norm_topk_prob and ours.config.qk_norm
        hf_sparse = [i for i, layer in enumerate(hf.model.layers) if "Sparse" in type(layer.mlp).__name__]
        assert list(moe.sparse_layers) == hf_sparse
        assert [type(layer.mlp).__name__ == "SparseMoE" for layer in map(ours.model.layer, range(c.num_hidden_layers))] == [
            i in hf_sparse for i in range(c.num_hidden_layers)
        ]


def test_save_pretrained_round_trips_through_transformers(pair, tmp_path):
    hf, ours, _ = pair
    swift_jax.save_pretrained(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _ids(2, 10, seed=3)
    assert np.abs(hf_logits(hf, ids) - hf_logits(reloaded, ids)).max() < TOL
    again = swift_jax.load_model(str(tmp_path))
    assert np.abs(np.asarray(again(jnp.asarray(ids))) - hf_logits(hf, ids)).max() < TOL


@pytest.mark.parametrize("model_type,overrides", [("qwen3_moe", dict(QWEN3_MOE, num_experts_per_tok=2)), ("mixtral", MIXTRAL)])
@pytest.mark.parametrize("padded", [False, True])
def test_aux_loss_equals_transformers(model_type, overrides, padded):
    hf = build_hf_model(model_type, seed=1, **overrides)
    ours = swift_jax.load_model(save_hf_model(hf, _tmp(model_type)))
    ids = _ids(2, 12, seed=4)
    mask = np.array([[1] * 12, [1] * 7 + [0] * 5], np.int32) if padded else np.ones_like(ids)
    with torch.no_grad():
        out = hf(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask) if padded else None,
            output_router_logits=True,
        )
    _, aux = ours.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask), return_aux_loss=True)
    diff = abs(float(aux) - float(out.aux_loss))
    print(f"aux {float(aux):.6f} vs {float(out.aux_loss):.6f}: diff {diff:.2e}")
    assert diff < 1e-5, (float(aux), float(out.aux_loss))


def _tmp(name):
    import tempfile

    return tempfile.mkdtemp(prefix=f"moe-{name}-")


def test_train_loss_adds_scaled_aux_loss_like_transformers():
    hf = build_hf_model("qwen3_moe", **dict(QWEN3_MOE, num_experts_per_tok=2), router_aux_loss_coef=0.5, output_router_logits=True)
    path = save_hf_model(hf, _tmp("train"))
    model = swift_jax.load_model(path)
    assert router_aux_coef(model.config) == 0.5 and router_aux_coef(model.config, 0.0) == 0.0
    ids = _ids(2, 12, seed=5)
    with torch.no_grad():
        ref = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long)).loss
    optimizer = optax.sgd(0.0)
    batch = dict(
        input_ids=ids, labels=ids, segment_ids=np.ones_like(ids), positions=np.broadcast_to(np.arange(12, dtype=np.int32), ids.shape)
    )
    batches = jax.tree.map(lambda x: jnp.asarray(x)[None], batch)
    for remat in (False, True):  # gradient checkpointing passes the router statistics through
        model = swift_jax.load_model(path)  # the step donates (deletes) the state it is given
        model.model.remat = remat
        graphdef, params, rng, frozen = split_model(model, nnx.Param)
        state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
        step = make_train_step(graphdef, optimizer, LanguageModeling(router_aux_loss_coef=router_aux_coef(model.config)))
        _, metrics = step(state, frozen, None, batches)
        assert abs(float(metrics["loss"]) - float(ref)) < 1e-5, (remat, float(metrics["loss"]), float(ref))


def test_ragged_dot_experts_equal_the_dense_reference():
    r = np.random.RandomState(0)
    tokens, embed, mlp, experts = 37, 16, 24, 8
    x = jnp.asarray(r.randn(tokens, embed), jnp.float32)
    gate, up = (jnp.asarray(r.randn(experts, embed, mlp) * 0.3, jnp.float32) for _ in range(2))
    down = jnp.asarray(r.randn(experts, mlp, embed) * 0.3, jnp.float32)
    logits = jnp.asarray(r.randn(tokens, experts), jnp.float32)
    for k in (1, 2, 4):
        _, weights, idx = route(logits, k, norm_topk_prob=True)
        args = (x, idx, weights, gate, up, down, jax.nn.silu)
        np.testing.assert_allclose(experts_ragged(*args), experts_dense(*args), atol=1e-5)

        def loss(fn, x, gate, up, down):
            return jnp.sum(fn(x, idx, weights, gate, up, down, jax.nn.silu) ** 2)

        g_ragged = jax.grad(lambda *a: loss(experts_ragged, *a), argnums=(0, 1, 2, 3))(x, gate, up, down)
        g_dense = jax.grad(lambda *a: loss(experts_dense, *a), argnums=(0, 1, 2, 3))(x, gate, up, down)
        for a, b in zip(g_ragged, g_dense):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_model_with_dense_reference_impl_gives_the_same_logits(tmp_path):
    hf = build_hf_model("mixtral", **dict(MIXTRAL, num_experts_per_tok=2))
    model = swift_jax.load_model(save_hf_model(hf, tmp_path))
    ids = jnp.asarray(_ids(2, 9, seed=6))
    ragged = np.asarray(model(ids))
    for stack in model.model.stacks:
        for layer in stack.layers:
            layer.mlp.impl = "dense"
    np.testing.assert_allclose(np.asarray(model(ids)), ragged, atol=1e-5)


@pytest.mark.parametrize("model_type,overrides", [("qwen3_moe", dict(QWEN3_MOE, num_experts_per_tok=2)), ("mixtral", MIXTRAL)])
def test_expert_parallel_mesh_shards_experts_and_keeps_logits(model_type, overrides, tmp_path):
    hf = build_hf_model(model_type, **overrides)
    path = save_hf_model(hf, tmp_path)
    mesh = make_mesh(expert_parallel_size=4, fsdp_size=2)
    model = swift_jax.load_model(path, mesh=mesh)
    experts = model.model.stacks[0].layers[0].mlp.experts  # [layers, expert, ...]
    assert experts.gate_proj[...].sharding.spec == P(None, "expert", "fsdp", None)
    assert experts.up_proj[...].sharding.spec == P(None, "expert", "fsdp", None)
    assert experts.down_proj[...].sharding.spec == P(None, "expert", None, "fsdp")
    ids = _ids(4, 10, seed=7)
    with jax.set_mesh(mesh):
        sharded = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    single = np.asarray(swift_jax.load_model(path)(jnp.asarray(ids)))
    assert np.abs(sharded - single).max() < 1e-5
    assert np.abs(sharded - hf_logits(hf, ids)).max() < TOL


def test_lora_all_linear_skips_experts_and_router(tmp_path):
    hf = build_hf_model("qwen3_moe", **dict(QWEN3_MOE, num_experts_per_tok=2, mlp_only_layers=[0]))
    model = swift_jax.load_model(save_hf_model(hf, tmp_path / "base"))
    ids = jnp.asarray(_ids(2, 8))
    before = np.asarray(model(ids))
    loraize(model, target_modules="all-linear", rank=4, dropout=0.0, rngs=nnx.Rngs(0))
    adapted = {m for p, _ in lora_layers(model) for m in hf_module_paths(model, p)}  # PEFT names
    assert "model.layers.0.mlp.gate_proj" in adapted and "model.layers.1.self_attn.q_proj" in adapted
    assert not any("experts" in p or p.endswith("mlp.gate") for p in adapted)
    np.testing.assert_allclose(np.asarray(model(ids)), before, atol=1e-6)  # lora_b starts at zero
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    grads = jax.grad(lambda l: jnp.sum(nnx.merge(graphdef, l, rest)(ids) ** 2))(lora)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    merge_lora(model)
    swift_jax.save_pretrained(model, tmp_path / "merged")
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged") is not None


@pytest.mark.parametrize("model_type,overrides", [("qwen3_moe", dict(QWEN3_MOE, num_experts_per_tok=2)), ("mixtral", MIXTRAL)])
def test_kv_cache_greedy_decoding_matches_transformers(model_type, overrides, tmp_path):
    from swift_jax.generation import GenerationConfig, Generator

    hf = build_hf_model(model_type, **overrides)
    model = swift_jax.load_model(save_hf_model(hf, tmp_path))
    prompt = _ids(1, 6, seed=8)[0].tolist()
    out = Generator(model).generate_ids([prompt], GenerationConfig(max_new_tokens=8, eos_token_ids=()))[0]
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    assert out.token_ids == ref[0, 6:].tolist()


def test_peft_adapter_on_attention_matches_peft(tmp_path):
    import peft

    from swift_jax.hf.peft import load_peft_adapter

    overrides = dict(QWEN3_MOE, num_experts_per_tok=2, mlp_only_layers=[0])
    base = save_hf_model(build_hf_model("qwen3_moe", **overrides), tmp_path / "base")
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    peft_model = peft.get_peft_model(build_hf_model("qwen3_moe", **overrides), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path / "adapter"))
    assert sum(len(hf_module_paths(ours, p)) for p, _ in lora_layers(ours)) == 2 * 2  # (peft refuses gate_proj/up_proj here: it maps them onto the fused experts)
    ids = _ids(2, 10, seed=9)
    assert np.abs(hf_logits(peft_model, ids) - np.asarray(ours(jnp.asarray(ids)))).max() < TOL
