"""The train step: loss, gradient accumulation, LoRA/QLoRA/full behaviour, on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.trainer.loss import chunked_cross_entropy
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
from swift_jax.trainer.step import TrainState, make_train_step, split_model
from swift_jax.tuners import loraize
from swift_jax.tuners.qlora import is_quantized, quantize_base
from tiny_models import build_hf_model, save_hf_model


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return save_hf_model(build_hf_model("qwen2"), tmp_path_factory.mktemp("base"))


def _batch(n, seq=12, seed=0):
    r = np.random.RandomState(seed)
    ids = r.randint(0, 128, (n, seq)).astype(np.int32)
    labels = ids.copy()
    labels[:, : seq // 3] = -100  # a "prompt" that is not trained
    seg = np.ones_like(ids)
    seg[0, -3:] = 0  # some padding
    labels[0, -3:] = -100
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), ids.shape).copy()
    return dict(input_ids=ids, labels=labels, segment_ids=seg, positions=pos)


def _setup(path, tuner, lr=1e-2, max_grad_norm=1.0):
    model = swift_jax.load_model(path)
    trainable = nnx.Param
    if tuner in ("lora", "qlora"):
        if tuner == "qlora":
            quantize_base(model, bits=4, tile_size=32)
        loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0))
        trainable = nnx.LoRAParam
    graphdef, params, rng, frozen = split_model(model, trainable)
    opt = make_optimizer(learning_rate_schedule("constant", lr, 10, 0), weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=max_grad_norm)
    state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), rng)
    step = make_train_step(graphdef, opt, LanguageModeling(loss_chunk_size=5))
    return model, lambda state, frozen, batch: step(state, frozen, None, batch), state, frozen


def test_chunked_loss_equals_plain_cross_entropy(base_path):
    model = swift_jax.load_model(base_path)
    b = _batch(3)
    hidden = model.hidden_states(jnp.asarray(b["input_ids"]), segment_ids=jnp.asarray(b["segment_ids"]))
    loss, count, correct = chunked_cross_entropy(hidden, jnp.asarray(b["labels"]), model.logits, chunk_size=5)
    logits = np.asarray(model.logits(hidden), np.float64)[:, :-1]
    targets = b["labels"][:, 1:]
    mask = targets != -100
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    expected = -np.take_along_axis(logp, np.where(mask, targets, 0)[..., None], -1)[..., 0][mask].sum()
    assert int(count) == mask.sum()
    assert abs(float(loss) - expected) < 1e-3
    assert int(correct) == (logits.argmax(-1) == targets)[mask].sum()


@pytest.mark.parametrize("tuner", ["full", "lora"])
def test_a_few_steps_decrease_the_loss(base_path, tuner):
    _, step, state, frozen = _setup(base_path, tuner)
    batch = {k: v[None] for k, v in _batch(4).items()}
    losses = []
    for _ in range(5):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses


def test_lora_trains_only_the_adapters_and_the_base_stays_bit_identical(base_path):
    model, step, state, frozen = _setup(base_path, "lora")
    trained_paths = [".".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)]
    assert trained_paths and all(("lora_a" in p or "lora_b" in p) for p in trained_paths), trained_paths
    batch = {k: v[None] for k, v in _batch(4).items()}
    for _ in range(3):
        state, _ = step(state, frozen, batch)
    # the trained model = the checkpoint's base weights (re-read from disk) + the adapters
    graphdef = nnx.split(model, nnx.LoRAParam, nnx.RngState, ...)[0]
    trained = nnx.merge(graphdef, state.params, state.rng, frozen)
    original = swift_jax.load_model(base_path)
    for (path, linear), (_, ref) in zip(_linears(trained), _linears(original)):
        assert np.array_equal(np.asarray(linear.kernel[...]), np.asarray(ref.kernel[...])), path
    moved = [float(jnp.abs(p).max()) for p in jax.tree.leaves(state.params)]
    assert max(moved) > 0  # lora_b left zero-init: the adapters really trained
    ids = jnp.asarray(_batch(2)["input_ids"])
    assert float(jnp.abs(trained(ids) - original(ids)).max()) > 1e-4  # and they change the output


def _linears(model):
    from swift_jax.tuners.lora import iter_linears

    return sorted(iter_linears(model), key=lambda x: x[0])


def test_qlora_forward_equals_the_dequantized_reference_and_trains(base_path):
    import qwix

    model, step, state, frozen = _setup(base_path, "qlora")
    assert is_quantized(model.model.stacks[0].layers[0].self_attn.q_proj)
    reference = swift_jax.load_model(base_path)  # the same model with each kernel replaced by its dequantized value
    for (path, q), (_, ref) in zip(_linears(model), _linears(reference)):
        kernel = q.kernel.get_value()
        if isinstance(kernel, qwix.QArray):
            dequantized = qwix.dequantize(kernel)
            assert not np.array_equal(np.asarray(dequantized), np.asarray(ref.kernel[...])), path  # really quantized
            ref.kernel.set_value(dequantized.astype(ref.kernel[...].dtype))
    ids = jnp.asarray(_batch(2)["input_ids"])
    assert float(jnp.abs(model(ids) - reference(ids)).max()) < 1e-4  # LoRA B starts at zero: only the base counts
    batch = {k: v[None] for k, v in _batch(4).items()}
    first = None
    for _ in range(5):
        state, metrics = step(state, frozen, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < first


def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(base_path):
    _, step_a, state_a, frozen = _setup(base_path, "full", max_grad_norm=0.0)
    _, step_b, state_b, _ = _setup(base_path, "full", max_grad_norm=0.0)
    big = _batch(8, seed=3)
    accumulated = {k: v.reshape(4, 2, -1) for k, v in big.items()}
    whole = {k: v[None] for k, v in big.items()}
    state_a, metrics_a = step_a(state_a, frozen, accumulated)
    state_b, metrics_b = step_b(state_b, frozen, whole)
    assert abs(float(metrics_a["loss"]) - float(metrics_b["loss"])) < 1e-5
    # the gradient norm is scale-sensitive: a per-micro-batch mean would change it
    assert float(metrics_a["grad_norm"]) == pytest.approx(float(metrics_b["grad_norm"]), rel=1e-5)
    diffs = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params))]
    # Adam divides by sqrt(v) + 1e-8, which amplifies float rounding of near-zero gradients: 1% of lr.
    assert max(diffs) < 1e-4, max(diffs)


def test_schedules_follow_transformers_shapes():
    cosine = learning_rate_schedule("cosine", 1.0, total_steps=10, warmup_steps=2)
    assert [round(float(cosine(s)), 4) for s in (0, 1, 2, 7, 10)] == [0.0, 0.5, 1.0, 0.3087, 0.0]  # 0.5 * (1 + cos(pi * 5 / 8)) at step 7
    linear = learning_rate_schedule("linear", 1.0, total_steps=10, warmup_steps=0)
    assert float(linear(5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_scheduler_type='step'"):
        learning_rate_schedule("step", 1.0, 10, 0)


def test_acc_strategy_seq_counts_samples_whose_every_target_is_predicted():
    # ms-swift's compute_acc(acc_strategy='seq'): per sample (per packed segment), all target tokens right
    vocab, ignore = 8, -100
    labels = np.array([[ignore, 1, 2, ignore, 3, 4, 0, 0],       # two packed samples: [1, 2] and [3, 4]
                       [ignore, 5, 6, 7, ignore, ignore, 0, 0],  # one sample [5, 6, 7]; the last slots are padding
                       [ignore, ignore, ignore, ignore, ignore, ignore, ignore, ignore]])  # nothing to score
    labels = np.where(labels == 0, ignore, labels)
    segments = np.array([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    predicted = np.roll(np.where(labels == ignore, 0, labels), -1, axis=1)  # position t predicts labels[t + 1]
    predicted[0, 3] = 7  # the second sample of row 0 gets its token 4 wrong
    logits = jax.nn.one_hot(jnp.asarray(predicted), vocab) * 10.0
    _, count, correct, right, total = chunked_cross_entropy(logits, jnp.asarray(labels), lambda h: h, chunk_size=4,
                                                            segment_ids=jnp.asarray(segments))
    assert (int(count), int(correct)) == (7, 6)
    assert (int(right), int(total)) == (2, 3)  # [1, 2] and [5, 6, 7] right, [3, 4] not; row 2 has no sample
