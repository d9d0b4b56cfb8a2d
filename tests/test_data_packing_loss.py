"""The loss over a packed batch equals the loss over the same samples unpacked (foundation model, token mean)."""

import json

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tiny_models import BASE
from tokenizers_for_tests import bundled_tokenizer

import swift_jax
from swift_jax.data import DataArgs, build_data
from swift_jax.data.batching import pad_sample
from swift_jax.data.templates import IGNORE


@nnx.jit
def _forward(model, input_ids, positions, segment_ids):
    return model(input_ids, positions=positions, segment_ids=segment_ids)


def token_mean_loss(model, batch) -> float:
    """Shifted cross-entropy, mean over target tokens: logits[t] predicts labels[t + 1]."""
    logits = _forward(model, *(jnp.asarray(batch[k]) for k in ("input_ids", "positions", "segment_ids")))
    labels = jnp.asarray(batch["labels"])[:, 1:]
    mask = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), jnp.where(mask, labels, 0))
    return float((ce * mask).sum() / mask.sum())


def test_packed_loss_equals_unpacked_loss(tmp_path):
    words = ["hello", "world", "token", "model", "grain", "packing", "jax", "flax", "optax", "orbax"]
    rows = []
    for i, w in enumerate(words):  # multi-turn rows of different lengths
        turns = [{"role": "user", "content": f"reverse {w}"}, {"role": "assistant", "content": w[::-1]}] * (1 + i % 3)
        rows.append({"messages": turns})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = bundled_tokenizer()
    pipe = build_data(DataArgs(dataset=[str(path)], max_length=128, packing=True), tokenizer, batch_size=2)
    packed = next(pipe.train_iterator())
    assert packed["segment_ids"].max() >= 3  # several samples share a row

    unpacked_rows = []
    for r in range(packed["input_ids"].shape[0]):
        seg = packed["segment_ids"][r]
        for s in range(1, seg.max() + 1):
            sample = {k: packed[k][r][seg == s] for k in ("input_ids", "labels")}
            unpacked_rows.append(pad_sample(sample, 128, tokenizer.pad_token_id))
    unpacked = {k: np.stack([row[k] for row in unpacked_rows]) for k in unpacked_rows[0]}

    config = {**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tokenizer), "max_position_embeddings": 128}
    model = swift_jax.init_model(config, dtype="float32", seed=0)
    packed_loss, unpacked_loss = token_mean_loss(model, packed), token_mean_loss(model, unpacked)
    assert np.isfinite(packed_loss) and packed_loss > 1.0  # a random model is far from the targets
    np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-5)


def test_padding_side_left_pads_before_each_sample_and_keeps_the_loss(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"reverse {w}" * (1 + i)}, {"role": "assistant", "content": w[::-1]}]}
            for i, w in enumerate(["hello", "world", "jax", "flax"])]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = bundled_tokenizer()
    batch = {}
    for side in ("right", "left"):
        pipe = build_data(DataArgs(dataset=[str(path)], max_length=128, padding_side=side, dataset_shuffle=False), tokenizer, batch_size=4)
        batch[side] = next(pipe.train_iterator())
        assert pipe.val_batches() == []
    left, right = batch["left"], batch["right"]
    assert (left["segment_ids"][:, -1] == 1).all() and (left["segment_ids"][:, 0] == 0).all()  # real tokens at the end
    for r in range(4):
        np.testing.assert_array_equal(left["input_ids"][r][left["segment_ids"][r] > 0], right["input_ids"][r][right["segment_ids"][r] > 0])
        assert left["positions"][r][left["segment_ids"][r] > 0][0] == 0
    config = {**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tokenizer), "max_position_embeddings": 128}
    model = swift_jax.init_model(config, dtype="float32", seed=0)
    loss = token_mean_loss(model, left)
    assert np.isfinite(loss) and loss > 1.0
    np.testing.assert_allclose(loss, token_mean_loss(model, right), rtol=1e-5)
