"""Sequence parallelism (`--sequence_parallel_size`): rows sharded over the `sequence` mesh axis give the
losses and gradients of one device, with packed segments, causality, sliding windows and soft caps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swift_jax
from swift_jax.kernels import attention
from swift_jax.parallel import make_mesh
from swift_jax.parallel.memory import activation_bytes_estimate
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.trainer import check_sequence_split
from mesh_steps import loss_grads_hlo, max_difference
from tiny_models import build_hf_model, save_hf_model

SEQ = 32


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """Local (window 6) / global layers with attention and final soft caps."""
    hf = build_hf_model("gemma2", sliding_window=6, attn_logit_softcapping=20.0, final_logit_softcapping=30.0,
                        head_dim=16, query_pre_attn_scalar=16)
    return save_hf_model(hf, tmp_path_factory.mktemp("gemma2"))


def _batch(rows=2):
    """Packed rows: segments that cross the shard boundaries (every 8 positions on 4 shards), a padded tail."""
    r = np.random.RandomState(0)
    ids = r.randint(0, 128, (rows, SEQ)).astype(np.int32)
    lengths = [11, 14, 4]  # then 3 padding positions
    seg = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(3)]).astype(np.int32)
    pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(3)]).astype(np.int32)
    labels = np.where(seg > 0, ids, -100)
    labels[:, [0, 11, 25]] = -100
    return dict(input_ids=ids, labels=labels, segment_ids=np.tile(seg, (rows, 1)), positions=np.tile(pos, (rows, 1)))


def _loss_and_grads(path, mesh, remat=False):
    """(loss, gradients, compiled HLO text) of one batch on `mesh`."""
    return loss_grads_hlo(path, mesh, _batch(), LanguageModeling(loss_chunk_size=8), remat)


def test_sequence_parallel_equals_one_device(gemma2):
    ref_loss, ref_grads, _ = _loss_and_grads(gemma2, make_mesh(fsdp_size=1, devices=jax.devices()[:1]))
    loss, grads, hlo = _loss_and_grads(gemma2, make_mesh(fsdp_size=2, sequence_parallel_size=4), remat=True)
    assert abs(loss - ref_loss) < 1e-5
    assert max_difference(grads, ref_grads) < 1e-5
    assert "all-gather" in hlo  # keys/values gathered over the sequence axis
    assert f"[1,{SEQ // 4}," in hlo  # local activations hold a quarter of the row


def test_sequence_length_must_split():
    mesh = make_mesh(fsdp_size=2, sequence_parallel_size=4)
    q = jnp.zeros((2, 30, 4, 16))
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="sequence length 30 does not split over --sequence_parallel_size 4"):
        attention(q, q, q, segment_ids=jnp.ones((2, 30), jnp.int32))


def test_trainer_rejects_rows_that_do_not_split():
    check_sequence_split(2048, 8)
    with pytest.raises(ValueError, match="--sequence_parallel_size 16 does not split rows of --max_length 1000"):
        check_sequence_split(1000, 16)


def test_memory_estimate_accounts_for_sequence_shards(gemma2):
    cfg = swift_jax.load_model(gemma2).config
    estimate = lambda n: activation_bytes_estimate(cfg, batch_per_device=1, seq_len=4096, remat=True, sequence_parallel=n)
    # positions and attention scores split 4 ways; the gathered keys/values are the only whole-row term
    assert 0.25 < estimate(4) / estimate(1) < 0.27
