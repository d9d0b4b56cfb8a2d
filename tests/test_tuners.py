"""LoRA variants (rsLoRA, DoRA, PiSSA/OLoRA, modules_to_save, bias), LoRA+, freezing and NEFTune, checked
against the real `peft` library (logits and gradients, float32 < 1e-4) and the optimizer's updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
from flax import nnx

import swift_jax
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
from swift_jax.trainer.step import TrainState, make_train_step, split_model
from swift_jax.tuners import loraize, merge_lora
from swift_jax.tuners.select import full_selection, module_selection
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)
COTANGENT = np.random.RandomState(1).randn(2, 10, 128).astype(np.float32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf_model(build_hf_model("qwen2"), tmp_path_factory.mktemp("base"))


def _perturb(model, filter_, seed=0, size=0.05):
    """Move the trainable variables off their initial values (as training would)."""
    key = jax.random.key(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, filter_)):
        key, sub = jax.random.split(key)
        var[...] = var[...] + size * jax.random.normal(sub, var.shape, var.dtype)


def _loss_ours(model):
    return jnp.sum(model(jnp.asarray(IDS)) * COTANGENT)


def _peft_grads(peft_model):
    peft_model.zero_grad()
    logits = peft_model(input_ids=torch.as_tensor(IDS, dtype=torch.long)).logits
    (logits * torch.as_tensor(COTANGENT)).sum().backward()
    return {n: p.grad.numpy() for n, p in peft_model.named_parameters() if p.grad is not None}


VARIANTS = {
    "rslora": dict(kw=dict(use_rslora=True), modules=(), bias="none"),
    "dora": dict(kw=dict(use_dora=True), modules=(), bias="none"),
    "modules_to_save": dict(kw=dict(), modules=("lm_head", "embed_tokens"), bias="all"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_peft_logits_and_gradients(base, tmp_path, variant):
    spec = VARIANTS[variant]
    ours = swift_jax.load_model(base)
    loraize(ours, target_modules=["q_proj", "v_proj", "down_proj"], rank=4, alpha=16, dropout=0.0, rngs=nnx.Rngs(0), **spec["kw"])
    trainable = module_selection(ours, spec["modules"], spec["bias"]).filter(also=nnx.LoRAParam)
    _perturb(ours, trainable)
    save_peft_adapter(ours, tmp_path, base_model_name_or_path=base, modules_to_save=spec["modules"], lora_bias=spec["bias"])
    peft_model = peft.PeftModel.from_pretrained(build_hf_model("qwen2"), tmp_path, is_trainable=True).eval()
    got = np.asarray(ours(jnp.asarray(IDS)))
    assert np.abs(hf_logits(peft_model, IDS) - got).max() < 1e-4
    assert np.abs(hf_logits(build_hf_model("qwen2"), IDS) - got).max() > 1e-3  # the adapter matters

    graphdef, params, rest = nnx.split(ours, trainable, ...)
    grads = jax.grad(lambda p: _loss_ours(nnx.merge(graphdef, p, rest)))(params)
    flat = {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(grads)}
    theirs = _peft_grads(peft_model)
    stack = "model.stacks.0.layers.0"  # layer 0 is slot 0 of the (only) scanned stack
    pairs = {
        f"{stack}.self_attn.q_proj.lora_a": ("model.layers.0.self_attn.q_proj.lora_A.default.weight", lambda g: g[0].T),
        f"{stack}.mlp.down_proj.lora_b": ("model.layers.0.mlp.down_proj.lora_B.default.weight", lambda g: g[0].T),
    }
    if variant == "dora":
        pairs[f"{stack}.self_attn.v_proj.lora.magnitude"] = ("model.layers.0.self_attn.v_proj.lora_magnitude_vector.default.weight", lambda g: g[0])
    if variant == "modules_to_save":
        pairs["lm_head.kernel"] = ("lm_head.modules_to_save.default.weight", lambda g: g.T)
        pairs["model.embed_tokens.embedding"] = ("model.embed_tokens.modules_to_save.default.weight", lambda g: g)
        pairs[f"{stack}.self_attn.k_proj.bias"] = ("model.layers.0.self_attn.k_proj.bias", lambda g: g[0])
    for ours_name, (peft_name, to_hf) in pairs.items():
        key = next(k for k in flat if k.replace(".lora.", ".").startswith(ours_name.replace(".lora.", ".")))
        want = theirs["base_model.model." + peft_name]
        scale = max(1.0, np.abs(want).max())
        assert np.abs(to_hf(flat[key]) - want).max() < 1e-4 * scale, (variant, ours_name)

    # --adapters: what PEFT reads, we read back; merging is exact
    loaded = load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
    assert np.abs(np.asarray(loaded(jnp.asarray(IDS))) - got).max() < 1e-5
    assert np.abs(np.asarray(merge_lora(loaded)(jnp.asarray(IDS))) - got).max() < 1e-4


@pytest.mark.parametrize("options", [dict(use_dora=True, use_rslora=True), dict(modules_to_save=["lm_head"], bias="all")])
def test_adapter_written_by_peft_loads_into_our_model(base, tmp_path, options):
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **options)
    peft_model = peft.get_peft_model(build_hf_model("qwen2"), config).eval()
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "magnitude" in n or "modules_to_save" in n or (n.endswith("bias") and options.get("bias") == "all"):
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    peft_model.save_pretrained(tmp_path)
    ours = load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
    assert np.abs(hf_logits(peft_model, IDS) - np.asarray(ours(jnp.asarray(IDS)))).max() < 1e-4


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_pissa_olora_start_at_the_base_and_export_peft_conversion(base, tmp_path, init):
    plain = np.asarray(swift_jax.load_model(base)(jnp.asarray(IDS)))
    ours = swift_jax.load_model(base)
    loraize(ours, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0), init_weights=init)
    assert np.abs(np.asarray(ours(jnp.asarray(IDS))) - plain).max() < 1e-5  # the initial model is the base
    _perturb(ours, nnx.LoRAParam)
    trained = np.asarray(ours(jnp.asarray(IDS)))
    save_peft_adapter(ours, tmp_path, base_model_name_or_path=base)
    peft_model = peft.PeftModel.from_pretrained(build_hf_model("qwen2"), tmp_path).eval()
    assert peft_model.peft_config["default"].r == 8  # rank 2r, applied to the original base
    assert np.abs(hf_logits(peft_model, IDS) - trained).max() < 1e-4
    assert np.abs(np.asarray(merge_lora(ours)(jnp.asarray(IDS))) - trained).max() < 1e-4


def test_olora_matches_peft_initialisation(base):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="olora")
    peft_model = peft.get_peft_model(build_hf_model("qwen2"), config)
    ours = swift_jax.load_model(base)
    loraize(ours, target_modules=["q_proj"], rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0), init_weights="olora")
    q = ours.model.stacks[0].layers[0].self_attn.q_proj
    layer0 = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    np.testing.assert_allclose(np.asarray(q.lora.lora_a[...][0]).T, layer0.lora_A["default"].weight.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(q.kernel[...][0]).T, layer0.base_layer.weight.detach().numpy(), atol=1e-5)
    # the same model, so the same gradients (B of the q_proj adapters)
    graphdef, params, rest = nnx.split(ours, nnx.LoRAParam, ...)
    grads = jax.grad(lambda p: _loss_ours(nnx.merge(graphdef, p, rest)))(params)
    ours_b = np.asarray(grads["model"]["stacks"][0]["layers"][0]["self_attn"]["q_proj"]["lora"]["lora_b"][...])  # [layers, r, out]
    theirs = _peft_grads(peft_model)
    for i in range(2):
        want = theirs[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.default.weight"]
        assert np.abs(ours_b[i].T - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_lora_plus_gives_b_the_stated_learning_rate_multiple():
    params = {"layer": {"lora_a": jnp.ones((2, 2)), "lora_b": jnp.ones((2, 2))}}
    grads = {"layer": {"lora_a": jnp.full((2, 2), 0.5), "lora_b": jnp.full((2, 2), 0.5)}}
    opt = make_optimizer(learning_rate_schedule("constant", 1e-3, 10, 0), weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                         max_grad_norm=None, lorap_lr_ratio=16.0)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    assert np.allclose(updates["layer"]["lora_b"], 16.0 * updates["layer"]["lora_a"], rtol=1e-6)
    adam = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState))
    np.testing.assert_allclose(adam.mu["layer"]["lora_b"], adam.mu["layer"]["lora_a"])  # same moments, B only steps further


def _batch(seq=12):
    r = np.random.RandomState(0)
    ids = r.randint(0, 128, (1, 2, seq)).astype(np.int32)
    return dict(input_ids=ids, labels=ids.copy(), segment_ids=np.ones_like(ids), positions=np.broadcast_to(np.arange(seq, dtype=np.int32), ids.shape).copy())


def test_freeze_rules_keep_frozen_slices_bit_identical(base):
    hf = build_hf_model("qwen2")
    torch_order = [n for n, _ in hf.named_parameters()]
    model = swift_jax.load_model(base)
    from swift_jax.tuners.select import hf_parameters

    assert [r.name for r in hf_parameters(model)] == torch_order  # ratio counts in named_parameters order
    sel = full_selection(model, freeze_parameters_ratio=0.5, trainable_parameters=["lm_head"],
                         trainable_parameters_regex=r"layers\.0\.mlp\.down_proj")
    # ms-swift's rule on the torch model: freeze a prefix of named_parameters holding <= half the count
    sizes = np.cumsum([p.numel() for p in hf.parameters()])
    frozen_hf = set(torch_order[: int(np.searchsorted(sizes, sizes[-1] * 0.5, side="right"))]) - {"lm_head.weight", "model.layers.0.mlp.down_proj.weight"}
    before = {".".join(map(str, k)): np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    graphdef, params, rng, frozen = split_model(model, sel.filter())
    opt = make_optimizer(learning_rate_schedule("constant", 1e-2, 10, 0), weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                         max_grad_norm=1.0, masks=sel.masks)
    step = make_train_step(graphdef, opt, LanguageModeling(loss_chunk_size=6))
    state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), rng)
    for _ in range(2):
        state, _ = step(state, frozen, None, jax.tree.map(jnp.asarray, _batch()))
    after = {".".join(map(str, k)): np.array(v[...]) for k, v in nnx.to_flat_state(nnx.state(nnx.merge(graphdef, state.params, rng, frozen), nnx.Param))}
    for r in hf_parameters(model):
        same = np.array_equal(before[r.path][r.index], after[r.path][r.index])
        assert same == (r.name in frozen_hf), r.name


def test_neftune_noise_only_in_training(base):
    from swift_jax.tuners.neftune import add_neftune

    model = swift_jax.load_model(base)
    clean = np.asarray(model.model.embed(jnp.asarray(IDS)))
    add_neftune(model, 5.0, seed=0)
    noisy = np.asarray(model.model.embed(jnp.asarray(IDS)))
    bound = 5.0 / np.sqrt(10 * 64)
    assert 0.5 * bound < np.abs(noisy - clean).max() <= bound * (1 + 1e-5)
    model.eval()
    assert np.array_equal(np.asarray(model.model.embed(jnp.asarray(IDS))), clean)


def test_target_regex_adapts_some_layers_of_a_scanned_stack(base, tmp_path):
    regex = r"model\.layers\.1\.self_attn\.(q|v)_proj"
    model = swift_jax.load_model(base)
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0), target_regex=regex)
    graphdef, params, rng, frozen = split_model(model, nnx.LoRAParam)
    opt = make_optimizer(learning_rate_schedule("constant", 1e-2, 10, 0), weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                         max_grad_norm=1.0, lorap_lr_ratio=4.0)
    step = make_train_step(graphdef, opt, LanguageModeling(loss_chunk_size=6))
    state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), rng)
    for _ in range(2):
        state, _ = step(state, frozen, None, jax.tree.map(jnp.asarray, _batch()))
    trained = nnx.merge(graphdef, state.params, rng, frozen)
    q = trained.model.stacks[0].layers[0].self_attn.q_proj.lora
    assert not np.asarray(q.lora_a[...][0]).any() and not np.asarray(q.lora_b[...][0]).any()  # layer 0: still no adapter
    assert np.asarray(q.lora_b[...][1]).any()  # layer 1 trained
    assert trained.model.stacks[0].layers[0].mlp.down_proj.lora is None
    save_peft_adapter(trained, tmp_path, base_model_name_or_path=base, target_regex=regex)
    peft_model = peft.PeftModel.from_pretrained(build_hf_model("qwen2"), tmp_path).eval()
    assert not hasattr(peft_model.base_model.model.model.layers[0].self_attn.q_proj, "lora_A")
    got = np.asarray(trained(jnp.asarray(IDS)))
    assert np.abs(hf_logits(peft_model, IDS) - got).max() < 1e-4
    loaded = load_peft_adapter(swift_jax.load_model(base), str(tmp_path))
    assert np.abs(np.asarray(loaded(jnp.asarray(IDS))) - got).max() < 1e-5


def test_training_run_with_the_tuner_flags_writes_a_peft_checkpoint(tmp_path):
    import json
    import os

    from safetensors import safe_open

    from test_trainer import args_of
    from swift_jax.trainer.trainer import Trainer

    flags = ["--output_dir", str(tmp_path), "--max_steps", "2", "--save_steps", "2", "--use_dora", "true", "--use_rslora", "true",
             "--lorap_lr_ratio", "16", "--modules_to_save", "embed_tokens", "--neftune_noise_alpha", "5", "--target_regex", r".*\.(q|v)_proj"]
    with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("unused",))):  # the trainer sets its mesh globally;
        result = Trainer(args_of(*flags)).train()  # leaving this block restores the previous one for later tests
    folder = os.path.join(result["run_dir"], "checkpoint-2")
    with open(os.path.join(folder, "adapter_config.json")) as f:
        config = json.load(f)
    assert (config["use_dora"], config["use_rslora"], config["modules_to_save"], config["target_modules"]) == (True, True, ["embed_tokens"], r".*\.(q|v)_proj")
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "np") as f:
        names = list(f.keys())
    assert "base_model.model.model.embed_tokens.weight" in names and any(n.endswith("lora_magnitude_vector") for n in names)
    assert np.isfinite(result["loss"])


@pytest.mark.parametrize("flags, message", [
    (["--tuner_type", "full", "--use_dora", "true"], "--use_dora applies to LoRA only"),
    (["--freeze_parameters", "model.embed_tokens"], "--freeze_parameters applies to full fine-tuning only"),
    (["--init_weights", "loftq"], "--init_weights 'loftq'"),
    (["--use_dora", "true", "--init_weights", "pissa"], "PEFT cannot convert"),
])
def test_tuner_flag_errors_name_the_flag(flags, message):
    from test_trainer import args_of

    with pytest.raises(ValueError, match=message):
        args_of(*flags)


def test_lora_dtype_sets_the_adapter_storage(base):
    model = swift_jax.load_model(base)
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0), lora_dtype=jnp.bfloat16, use_dora=True)
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert model.model.stacks[0].layers[0].self_attn.q_proj.kernel.get_value().dtype == jnp.float32
