"""Expert parallelism that partitions (`--expert_parallel_size`): tokens go to their experts' devices by
all-to-all, each device runs grouped matmuls on its own experts only; losses and gradients equal one device."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.parallel import make_mesh
from swift_jax.trainer.method import LanguageModeling
from mesh_steps import loss_grads_hlo, max_difference
from tiny_models import build_hf_model, save_hf_model

EXPERTS, EMBED, MLP = 8, 64, 32


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    hf = build_hf_model("qwen3_moe", num_experts=EXPERTS, moe_intermediate_size=MLP, num_experts_per_tok=2)
    return save_hf_model(hf, tmp_path_factory.mktemp("moe"))


def _batch(rows=8, seq=16):
    r = np.random.RandomState(1)
    ids = r.randint(0, 128, (rows, seq)).astype(np.int32)
    seg = np.concatenate([np.ones((rows, 9)), 2 * np.ones((rows, 5)), np.zeros((rows, 2))], 1).astype(np.int32)
    pos = np.concatenate([np.arange(9), np.arange(5), np.zeros(2)]).astype(np.int32)[None].repeat(rows, 0)
    labels = np.where(seg > 0, ids, -100)
    return dict(input_ids=ids, labels=labels, segment_ids=seg, positions=pos)


def _loss_and_grads(path, mesh, remat=False):
    """(loss, with the router's aux loss, gradients, compiled HLO text) of one batch on `mesh`."""
    return loss_grads_hlo(path, mesh, _batch(), LanguageModeling(loss_chunk_size=8, router_aux_loss_coef=0.1), remat)


def _dot_operand_widths(hlo: str) -> set[int]:
    """Contracting widths of the grouped matmuls' weight operands in the HLO: XLA:CPU lowers a `ragged_dot`
    with G groups against `[G, embed, mlp]` to a dot with a `[G * embed, mlp]` weight."""
    return {int(m) for m in re.findall(r"f32\[(\d+),%d\]" % MLP, hlo)}


def _sort_lengths(hlo: str) -> set[int]:
    """Lengths of the 1-D sorts (the dispatch's argsorts of token copies by expert) in the HLO."""
    return {int(m) for m in re.findall(r"= \(?[su]32\[(\d+)\][^=]*? sort\(", hlo)}


def test_expert_parallel_equals_one_device_and_partitions(moe):
    ref_loss, ref_grads, ref_hlo = _loss_and_grads(moe, make_mesh(fsdp_size=1, devices=jax.devices()[:1]))
    loss, grads, hlo = _loss_and_grads(moe, make_mesh(expert_parallel_size=4, fsdp_size=2), remat=True)
    assert abs(loss - ref_loss) < 1e-5
    assert max_difference(grads, ref_grads) < 1e-5
    # each device holds 2 of the 8 experts (layers stacked in front, embed split over fsdp) ...
    params = re.findall(r"parameter\(\d+\)", hlo)
    assert params and f"f32[2,2,{EMBED // 2},{MLP}]" in hlo and f"f32[2,{EXPERTS},{EMBED},{MLP}]" in ref_hlo
    assert f"f32[2,{EXPERTS},{EMBED // 2},{MLP}]" not in hlo and f"f32[2,{EXPERTS},{EMBED},{MLP}]" not in hlo
    # ... sorts only its own 16 tokens' 32 copies (and the 4 x 32 rows it receives), never all 256 copies
    # (GSPMD's global argsort, which the one-device program has) ...
    copies = 8 * 16 * 2
    assert _sort_lengths(ref_hlo) == {copies}
    assert _sort_lengths(hlo) == {copies // 8, 4 * copies // 8}
    # ... exchanges tokens by all-to-all, and its grouped matmuls contract over its 2 experts only
    assert "all-to-all" in hlo
    assert EXPERTS * EMBED in _dot_operand_widths(ref_hlo)
    assert 2 * EMBED in _dot_operand_widths(hlo) and EXPERTS * EMBED not in _dot_operand_widths(hlo)


def _expert_lora_logits(path, mesh):
    """Logits of the model with LoRA on every expert weight (fixed, non-zero adapters) on `mesh`."""
    import jax.numpy as jnp
    from swift_jax.tuners.experts import loraize_experts

    with jax.set_mesh(mesh):
        model = swift_jax.load_model(path, mesh=mesh)
        loraize_experts(model, ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], rank=2, alpha=4,
                        rngs=nnx.Rngs(0))
        key = jax.random.key(3)
        for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
            key, sub = jax.random.split(key)
            var[...] = var[...] + 0.05 * jax.random.normal(sub, var.shape, var.dtype)
        graphdef, state = nnx.split(model)
        ids = jnp.asarray(_batch()["input_ids"])
        return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids))


def test_expert_parallel_applies_expert_lora(moe):
    """The all-to-all dispatch runs each device's experts with their LoRA updates (`--target_parameters`)."""
    ref = _expert_lora_logits(moe, make_mesh(fsdp_size=1, devices=jax.devices()[:1]))
    got = _expert_lora_logits(moe, make_mesh(expert_parallel_size=4, fsdp_size=2))
    plain = np.asarray(swift_jax.load_model(moe)(jax.numpy.asarray(_batch()["input_ids"])))
    assert np.max(np.abs(ref - plain)) > 1e-3  # the adapters change the output ...
    assert np.max(np.abs(got - ref)) < 1e-4  # ... and expert parallelism applies them
