"""ms-swift's vision-language training controls: `--freeze_llm/vit/aligner` for full fine-tuning, LoRA and
QLoRA, `--vit_lr` / `--aligner_lr`, `--vit_gradient_checkpointing`; LoRA `all-linear` targets equal
ms-swift's (tests/golden/vl_lora_targets.json, scripts/record_ms_swift_vl_targets.py) for every model."""

import copy
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import swift_jax
from swift_jax.config import TrainArguments
from swift_jax.hf.peft import hf_module_paths
from swift_jax.trainer.optim import make_optimizer
from swift_jax.trainer.setup import apply_tuner
from swift_jax.trainer.step import split_model
from swift_jax.tuners.lora import lora_layers, resolve_regex
from swift_jax.tuners.multimodal import lora_target_regex, lr_factors, set_vision_remat
from swift_jax.tuners.qlora import is_quantized
from tiny_vlm import IMAGE, build_hf_gemma3, build_hf_internvl, build_hf_vlm

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "vl_lora_targets.json")))
BUILDERS = {
    "qwen2_vl": lambda: build_hf_vlm("qwen2_vl"),
    "qwen2_5_vl": lambda: build_hf_vlm("qwen2_5_vl"),
    "internvl": build_hf_internvl,
    "gemma3": build_hf_gemma3,
}
FLAGS = [(llm, vit, aligner) for llm in (0, 1) for vit in (0, 1) for aligner in (0, 1)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (HF model, saved folder)."""
    out = {}
    for kind, build in BUILDERS.items():
        hf, path = build(), tmp_path_factory.mktemp(kind)
        hf.save_pretrained(path)
        out[kind] = (hf, str(path))
    return out


def _args(path: str, tuner_type: str = "full", **tuner) -> TrainArguments:
    args = TrainArguments()
    args.model_args.model, args.tuner.tuner_type, args.tuner.lora_dropout = path, tuner_type, 0.0
    for key, value in tuner.items():
        setattr(args.tuner, key, value)
    return args


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_lora_all_linear_targets_equal_ms_swift(checkpoints, kind):
    """For every freeze setting: the modules our regex names in transformers' model, and the layers we
    adapt, are the ones ms-swift's `get_multimodal_target_regex` makes PEFT adapt."""
    hf, path = checkpoints[kind]
    model = swift_jax.load_model(path)
    hf_modules = [name for name, _ in hf.named_modules() if name]
    for llm, vit, aligner in FLAGS:
        golden = GOLDEN["cases"][f"{kind}:llm={llm},vit={vit},aligner={aligner}"]
        tuner = _args(path, "lora", freeze_llm=bool(llm), freeze_vit=bool(vit), freeze_aligner=bool(aligner)).tuner
        if not golden.get("modules"):  # ms-swift refuses, or its regex matches nothing: we refuse
            with pytest.raises(ValueError, match="leave no linear layer"):
                lora_target_regex(model, tuner)
            continue
        regex = lora_target_regex(model, tuner)
        assert {m for m in hf_modules if re.fullmatch(regex, m)} == set(golden["modules"]), (llm, vit, aligner)
        chosen, left_out = resolve_regex(model, regex)
        ours = {name for p, _ in chosen for name in hf_module_paths(model, p)}
        assert ours == set(golden["modules"]) and not left_out, (llm, vit, aligner)


def test_full_aligner_inside_frozen_vision_tower_trains(checkpoints):
    """Qwen2-VL's merger sits inside the vision tower: `--freeze_aligner false` trains it while the rest of
    the frozen tower stays frozen (ms-swift's trainable_parameters win over freeze_parameters)."""
    path = checkpoints["qwen2_vl"][1]
    model = swift_jax.load_model(path)
    plan = apply_tuner(model, _args(path, freeze_aligner=False))
    trainable = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, plan.trainable))}
    assert any(p.startswith("visual.merger.") for p in trainable)
    assert not any(p.startswith("visual.") and not p.startswith("visual.merger.") for p in trainable)
    assert any(p.startswith("model.") for p in trainable) and "lm_head.kernel" in trainable


def test_full_freeze_parameters_read_transformers_names(checkpoints):
    """`--freeze_parameters` prefixes are transformers' parameter names, as ms-swift's: `model.visual.*`."""
    path = checkpoints["qwen2_vl"][1]
    model = swift_jax.load_model(path)
    plan = apply_tuner(model, _args(path, freeze_vit=False, freeze_parameters=["model.visual.blocks.0."]))
    trainable = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, plan.trainable))}
    assert any(p.startswith("visual.blocks.1.") for p in trainable)
    assert not any(p.startswith(("visual.blocks.0.", "visual.merger.")) for p in trainable)
    with pytest.raises(ValueError, match=r"match no parameter; names look like model\.visual\."):
        apply_tuner(swift_jax.load_model(path), _args(path, freeze_parameters=["visual.blocks.0."]))


def _train(model, plan, pixels, ids, steps=3, lr=1e-3, factors=None):
    """A few AdamW steps on a cross-entropy over an image row, fed the pixels directly; the model updated."""
    graphdef, params, rng, frozen = split_model(model, plan.trainable)
    opt = make_optimizer(optax.constant_schedule(lr), weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
                         max_grad_norm=None, masks=plan.masks, lr_factors=factors)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss(params):
            logits = nnx.merge(graphdef, params, rng, frozen)(ids, pixel_values=pixels)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    nnx.update(model, params)
    return model


def _flat(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Param)
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)
            if isinstance(v.get_value(), jax.Array)}


def _part(name: str) -> str:
    return "aligner" if name.startswith("multi_modal_projector.") else (
        "vision" if name.startswith("vision_tower.") else "llm")


@pytest.fixture(scope="module")
def internvl(checkpoints):
    """The tiny InternVL folder and a row with one 16x16 tile (4 image tokens)."""
    path = checkpoints["internvl"][1]
    pixels = jnp.asarray(np.random.RandomState(0).randn(1, 3, 16, 16).astype(np.float32))
    ids = jnp.asarray([[1, 2] + [IMAGE] * 4 + [5, 6, 7, 8]], jnp.int32)
    return path, pixels, ids


@pytest.mark.parametrize(
    "flags,changed",
    [({}, {"llm"}), (dict(freeze_vit=False, freeze_aligner=False, freeze_llm=True), {"vision", "aligner"})],
    ids=["default", "vit+aligner"],
)
def test_full_frozen_parts_stay_bit_identical(internvl, flags, changed):
    path, pixels, ids = internvl
    model = swift_jax.load_model(path)
    before = _flat(model)
    _train(model, apply_tuner(model, _args(path, **flags)), pixels, ids)
    after = _flat(model)
    moved = {_part(n) for n in before if not np.array_equal(before[n], after[n])}
    assert moved == changed


def test_vit_lr_and_aligner_lr_scale_the_updates(internvl):
    """First AdamW step (no decay): every element moves by about its part's learning rate."""
    path, pixels, ids = internvl
    model = swift_jax.load_model(path)
    args = _args(path, freeze_vit=False, freeze_aligner=False, vit_lr=1e-4, aligner_lr=3e-3)
    plan = apply_tuner(model, args)
    before = _flat(model)
    _train(model, plan, pixels, ids, steps=1, lr=1e-3, factors=lr_factors(model, 1e-3, args.tuner))
    after = _flat(model)
    step = {part: 0.0 for part in ("llm", "vision", "aligner")}
    for name in before:
        step[_part(name)] = max(step[_part(name)], float(np.abs(after[name] - before[name]).max()))
    np.testing.assert_allclose([step["llm"], step["vision"], step["aligner"]], [1e-3, 1e-4, 3e-3], rtol=0.02)


@pytest.mark.parametrize("tuner_type", ["lora", "qlora"])
def test_lora_and_qlora_adapt_the_language_model_only(internvl, tuner_type):
    """Default flags: adapters on the language model only; QLoRA leaves the vision tower and aligner
    unquantized (ms-swift's modules_to_not_convert); training moves the adapters and nothing else."""
    path, pixels, ids = internvl
    model = swift_jax.load_model(path)
    args = _args(path, tuner_type, lora_rank=4)
    plan = apply_tuner(model, args)
    assert args.tuner.target_regex.startswith(r"^(model\.language_model(?=\.)")  # saved with the adapter
    adapted = [p for p, _ in lora_layers(model)]
    assert adapted and all(_part(p) == "llm" for p in adapted)
    if tuner_type == "qlora":
        from swift_jax.tuners.lora import iter_linears

        quantized = {_part(p) for p, m in iter_linears(model) if is_quantized(m)}
        assert quantized == {"llm"}
    before = _flat(model)
    _train(model, plan, pixels, ids, steps=2)
    after = _flat(model)
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert moved == {n for n in before if n.endswith((".lora_a", ".lora_b"))}


def test_vit_gradient_checkpointing_same_gradients(checkpoints):
    """Rematerialised vision layers give the same gradients (the recomputation changes memory, not math)."""
    path = checkpoints["gemma3"][1]
    model = swift_jax.load_model(path)
    pixels = jnp.asarray(np.random.RandomState(1).randn(2, 3, 16, 16).astype(np.float32))

    def grads(remat):  # of the image features (the decoder is untouched by the flag)
        set_vision_remat(model, remat)
        graphdef, state = nnx.split(model)
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s).image_features(pixels) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(state)

    plain, remat = grads(False), grads(True)
    assert model.vision_tower.remat is True
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), plain, remat)
    assert max(jax.tree.leaves(diff)) < 1e-5


def test_controls_refused_on_text_models(tmp_path):
    from tiny_models import build_hf_model, save_hf_model

    path = save_hf_model(build_hf_model("qwen2"), tmp_path / "qwen2")
    model = swift_jax.load_model(path)
    with pytest.raises(ValueError, match="--vit_lr applies to vision-language models"):
        apply_tuner(copy.deepcopy(model), _args(path, vit_lr=1e-5))
