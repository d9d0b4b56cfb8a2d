"""Scanned layers (models/scan.py) against the unrolled layout, and remat policies (models/remat.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

import swift_jax
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.models.decoder import set_scan_layers
from swift_jax.models.registry import architecture, deepseek_v3_config, gemma_config, moe_config
from swift_jax.models.remat import REMAT_CHOICES, remat_policy
from swift_jax.models.scan import Segment, layer_layout
from swift_jax.modeling import hf_slices
from swift_jax.tuners import loraize
from tiny_models import build_hf_model, hf_logits, save_hf_model

SMALL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
MODELS = {  # (model_type, overrides): one run, alternating local/global pairs, dense then MoE layers
    "llama": ("llama", dict(SMALL, num_hidden_layers=3)),
    "gemma2": ("gemma2", dict(SMALL, num_hidden_layers=4, sliding_window=4, query_pre_attn_scalar=16)),
    "deepseek_v3": (
        "deepseek_v3",
        dict(
            hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=3,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, kv_lora_rank=8, q_lora_rank=None,
            qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, first_k_dense_replace=1, n_group=1, topk_group=1,
        ),
    ),
}
IDS = np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_pair(request, tmp_path_factory):
    model_type, overrides = MODELS[request.param]
    hf = build_hf_model(model_type, **overrides)
    return hf, save_hf_model(hf, str(tmp_path_factory.mktemp(request.param)))


def _per_hf_name(model, state) -> dict[str, np.ndarray]:
    """A parameter (or gradient) state keyed by HF tensor name, whatever the layer layout."""
    arch, out = architecture(model.config.model_type), {}
    for path, var in nnx.to_flat_state(state):
        value = np.asarray(var[...])
        for index, name, _ in hf_slices(arch, model.config, ".".join(map(str, path)), value.shape):
            out[name] = value[index] if index else value
    return out


def _loss_and_grads(model):
    """Mean next-token cross-entropy on IDS and its gradients by HF tensor name."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(jnp.asarray(IDS))[:, :-1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), IDS[:, 1:, None], axis=-1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), _per_hf_name(model, grads)


def test_layout_cuts_runs_and_repeating_patterns():
    base = dict(vocab_size=16, hidden_size=8, intermediate_size=8, num_attention_heads=1, sliding_window=4)
    gemma3 = gemma_config(dict(base, model_type="gemma3_text", num_hidden_layers=26))  # 5 local : 1 global
    assert layer_layout(gemma3) == (Segment(0, 6, 4), Segment(24, 1, 2))
    gemma2 = gemma_config(dict(base, model_type="gemma2", num_hidden_layers=5))
    assert layer_layout(gemma2) == (Segment(0, 2, 2), Segment(4, 1, 1))
    moe = dict(base, model_type="qwen3_moe", num_hidden_layers=6, num_experts=4, num_experts_per_tok=1, moe_intermediate_size=8)
    assert layer_layout(moe_config(dict(moe, mlp_only_layers=[0, 1]))) == (Segment(0, 1, 2), Segment(2, 1, 4))
    assert layer_layout(moe_config(dict(moe, decoder_sparse_step=2))) == (Segment(0, 2, 3),)
    deepseek = dict(MODELS["deepseek_v3"][1], model_type="deepseek_v3", vocab_size=16, num_hidden_layers=5)
    assert layer_layout(deepseek_v3_config(deepseek)) == (Segment(0, 1, 1), Segment(1, 1, 4))


def test_scanned_equals_unrolled_logits_and_gradients(hf_pair):
    hf, path = hf_pair
    scanned, unrolled = swift_jax.load_model(path), swift_jax.load_model(path, scan_layers=False)
    assert scanned.config.scan_layers and not hasattr(scanned.model, "layers") and hasattr(unrolled.model, "layers")
    logits = np.asarray(scanned(jnp.asarray(IDS)))
    assert np.abs(logits - np.asarray(unrolled(jnp.asarray(IDS)))).max() < 1e-5
    assert np.abs(logits - hf_logits(hf, IDS)).max() < 1e-4
    loss_s, grads_s = _loss_and_grads(scanned)
    loss_u, grads_u = _loss_and_grads(unrolled)
    assert abs(loss_s - loss_u) < 1e-6 and sorted(grads_s) == sorted(grads_u)
    for name, g in grads_u.items():
        np.testing.assert_allclose(grads_s[name], g, atol=1e-6, rtol=1e-4, err_msg=name)


def test_hf_to_scanned_to_hf_round_trip_keeps_transformers_logits(tmp_path):
    hf = build_hf_model("gemma2", **MODELS["gemma2"][1])
    model = swift_jax.load_model(save_hf_model(hf, str(tmp_path / "in")))
    assert [(s.period, s.repeats) for s in model.model.stacks] == [(2, 2)]  # local/global pairs, stacked
    swift_jax.save_pretrained(model, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert np.abs(hf_logits(reloaded, IDS) - hf_logits(hf, IDS)).max() < 1e-5


def _forward_hlo(model) -> str:
    return nnx.jit(lambda m, x: m(x)).lower(model, jnp.asarray(IDS)).as_text()


def test_scanned_hlo_holds_one_layer_body_not_one_per_layer():
    config = dict(model_type="llama", vocab_size=128, max_position_embeddings=64, **SMALL)
    hlo = {
        (layers, scan): _forward_hlo(swift_jax.init_model(dict(config, num_hidden_layers=layers), scan_layers=scan))
        for layers, scan in ((2, True), (8, True), (8, False))
    }
    dots = {key: text.count("dot_general") for key, text in hlo.items()}
    assert hlo[8, True].count("stablehlo.while") == 1 and "stablehlo.while" not in hlo[8, False]
    assert dots[8, True] == dots[2, True]  # one layer body, whatever the depth
    assert dots[8, False] > 4 * dots[8, True]


def test_every_remat_policy_keeps_loss_and_gradients(tmp_path):
    path = save_hf_model(build_hf_model("llama", **dict(SMALL, num_hidden_layers=2)), str(tmp_path))
    reference = _loss_and_grads(swift_jax.load_model(path))
    policies = [r for r in REMAT_CHOICES if r not in (False, "nothing_saveable")]  # True is nothing_saveable
    for scan, remat in [(True, r) for r in policies] + [(False, "dots_saveable")]:
        model = swift_jax.load_model(path, scan_layers=scan)
        model.model.remat = remat
        loss, grads = _loss_and_grads(model)
        assert abs(loss - reference[0]) < 1e-6, (scan, remat)
        for name, g in reference[1].items():
            np.testing.assert_allclose(grads[name], g, atol=1e-6, rtol=1e-5, err_msg=f"{scan} {remat} {name}")


def test_remat_settings_are_checked_with_the_valid_names():
    assert remat_policy(False) is None and remat_policy("false") is None
    assert remat_policy(True) is jax.checkpoint_policies.nothing_saveable
    assert remat_policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
    with pytest.raises(ValueError, match="gradient_checkpointing='dots'.*dots_with_no_batch_dims_saveable"):
        remat_policy("dots")
    model = swift_jax.init_model(dict(model_type="llama", vocab_size=16, num_hidden_layers=1, **SMALL))
    with pytest.raises(ValueError, match="nothing_saveable"):
        model.model.remat = "everything"


def test_layout_switch_and_peft_files_carry_stacked_adapters(tmp_path):
    path = save_hf_model(build_hf_model("llama", **dict(SMALL, num_hidden_layers=3)), str(tmp_path / "base"))
    model = loraize(swift_jax.load_model(path), target_modules=["q_proj", "down_proj"], rank=2, dropout=0.0, rngs=nnx.Rngs(1))
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):  # give every layer's B a distinct value
        var[...] = jax.random.normal(jax.random.key(var[...].size), var.shape) * 0.1
    before = np.asarray(model(jnp.asarray(IDS)))
    save_peft_adapter(model, str(tmp_path / "adapter"), base_model_name_or_path=path)
    unrolled = load_peft_adapter(swift_jax.load_model(path, scan_layers=False), str(tmp_path / "adapter"))
    assert np.abs(np.asarray(unrolled(jnp.asarray(IDS))) - before).max() < 1e-5
    set_scan_layers(model, False)
    assert np.abs(np.asarray(model(jnp.asarray(IDS))) - before).max() < 1e-5
    set_scan_layers(model, True)
    assert np.abs(np.asarray(model(jnp.asarray(IDS))) - before).max() < 1e-5


@pytest.mark.parametrize("flags, scanned", [
    ([], True),  # the default: scanned, with gradient checkpointing
    (["--gradient_checkpointing", "false"], False),  # CPU without remat: unrolled steps faster (docs/benchmarks.md)
    (["--gradient_checkpointing", "false", "--scan_layers", "true"], True),  # an explicit flag wins
    (["--scan_layers", "false"], False),
])
def test_scan_layers_default_follows_the_measured_step_time(tmp_path, flags, scanned):
    from swift_jax.cli import parse_config
    from swift_jax.config import ALIASES, TrainArguments
    from swift_jax.parallel import make_mesh
    from swift_jax.trainer.setup import build_model, resolve_scan_layers

    path = save_hf_model(build_hf_model("llama", **dict(SMALL, num_hidden_layers=2)), tmp_path / "m")
    args = parse_config(TrainArguments, ["--model", str(path), "--tuner_type", "full", *flags], aliases=ALIASES)
    model = build_model(args, make_mesh(fsdp_size=1, devices=jax.devices()[:1]))
    assert model.config.scan_layers is scanned
    assert resolve_scan_layers(None, False, platform="gpu") is True  # only CPU's loop cost moves the default
