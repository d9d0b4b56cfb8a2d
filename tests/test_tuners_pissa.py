"""PiSSA against `peft` (initial adapter, residual base and gradients, float32 < 1e-4), QPiSSA (PiSSA /
OLoRA with QLoRA: the float kernel is split, then the residual quantized), and the refused DoRA + PiSSA."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

import swift_jax
from swift_jax.tuners import loraize
from tiny_models import build_hf_model, hf_logits, save_hf_model

IDS = np.random.RandomState(0).randint(0, 128, (2, 10)).astype(np.int32)
COTANGENT = np.random.RandomState(1).randn(2, 10, 128).astype(np.float32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf_model(build_hf_model("qwen2"), tmp_path_factory.mktemp("base"))


def test_pissa_matches_peft_initialisation_and_gradients(base):
    """PEFT's full-SVD PiSSA on q_proj and ours agree up to each singular pair's sign, which SVD leaves free
    (flipping A's column and B's row together changes nothing); with the signs aligned, the adapters, the
    residual kernels, the logits and the gradients of A and B are PEFT's."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="pissa", lora_dropout=0.0)
    peft_model = peft.get_peft_model(build_hf_model("qwen2"), config)
    ours = swift_jax.load_model(base)
    loraize(ours, target_modules=["q_proj"], rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0), init_weights="pissa")
    q = ours.model.stacks[0].layers[0].self_attn.q_proj
    a, b = np.array(q.lora.lora_a[...]), np.array(q.lora.lora_b[...])  # [layers, in, r], [layers, r, out]
    for i in range(2):
        theirs = peft_model.base_model.model.model.layers[i].self_attn.q_proj
        theirs_a = theirs.lora_A["default"].weight.detach().numpy()  # [r, in]
        signs = np.sign(np.sum(a[i].T * theirs_a, axis=1))  # [r]
        a[i], b[i] = a[i] * signs[None, :], b[i] * signs[:, None]
        np.testing.assert_allclose(a[i].T, theirs_a, atol=1e-5)
        np.testing.assert_allclose(b[i].T, theirs.lora_B["default"].weight.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(q.kernel[...][i]).T, theirs.base_layer.weight.detach().numpy(), atol=1e-5)
    q.lora.lora_a[...], q.lora.lora_b[...] = jnp.asarray(a), jnp.asarray(b)
    assert np.abs(hf_logits(peft_model, IDS) - np.asarray(ours(jnp.asarray(IDS)))).max() < 1e-4

    graphdef, params, rest = nnx.split(ours, nnx.LoRAParam, ...)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(jnp.asarray(IDS)) * COTANGENT))(params)
    g = grads["model"]["stacks"][0]["layers"][0]["self_attn"]["q_proj"]["lora"]
    peft_model.zero_grad()
    (peft_model(input_ids=torch.as_tensor(IDS, dtype=torch.long)).logits * torch.as_tensor(COTANGENT)).sum().backward()
    named = dict(peft_model.named_parameters())
    for i in range(2):
        for kind, ours_g in (("A", np.asarray(g["lora_a"][...][i]).T), ("B", np.asarray(g["lora_b"][...][i]).T)):
            want = named[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{kind}.default.weight"].grad.numpy()
            assert np.abs(ours_g - want).max() < 1e-4 * max(1.0, np.abs(want).max()), (i, kind)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_qpissa_quantizes_the_residual(base, init):
    """`--tuner_type qlora --init_weights pissa|olora` (as PEFT's pissa_init / olora_init on a 4-bit layer):
    the float kernel is split, the adapter keeps its part in full precision and only the residual is
    stored quantized. PiSSA's residual (the minor singular directions) quantizes with less error than the
    whole kernel, so its initial model is closer to the float base than plain QLoRA's (the QPiSSA claim);
    OLoRA's QR split makes no such promise, only a quantized residual near the base."""
    from swift_jax.trainer.setup import apply_tuner
    from swift_jax.tuners.qlora import is_quantized
    from test_trainer import args_of

    plain = np.asarray(swift_jax.load_model(base)(jnp.asarray(IDS)))
    errors = {}
    for flags in (["--init_weights", init], []):
        model = swift_jax.load_model(base)
        apply_tuner(model, args_of("--model", base, "--tuner_type", "qlora", "--lora_rank", "8", "--lora_dropout", "0", *flags))
        assert is_quantized(model.model.stacks[0].layers[0].self_attn.q_proj)
        errors[bool(flags)] = np.abs(np.asarray(model(jnp.asarray(IDS))) - plain).max()
    assert 0 < errors[True] < (errors[False] if init == "pissa" else 0.5), errors


def test_dora_with_pissa_is_refused_with_the_reason():
    from test_trainer import args_of

    with pytest.raises(ValueError, match="not linear in its factors"):
        args_of("--use_dora", "true", "--init_weights", "olora")
