"""Training on meshes: the same steps on 1 device and on 8 fake devices give the same losses, and a
checkpoint written on one mesh resumes on another."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.parallel import make_mesh
from swift_jax.trainer import checkpoint as ckpt
from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.step import TrainState, make_train_step, split_model
from swift_jax.trainer.trainer import init_optimizer_state, stack_batches
from tiny_models import build_hf_model, save_hf_model

MESHES = {
    "single": dict(fsdp_size=1, devices=jax.devices()[:1]),
    "fsdp8": dict(fsdp_size=8),
    "fsdp4-tp2": dict(fsdp_size=4, tensor_parallel_size=2),
    "dp2-fsdp2-tp2": dict(data_parallel_size=2, fsdp_size=2, tensor_parallel_size=2),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf_model(build_hf_model("qwen2"), tmp_path_factory.mktemp("base"))


def _mesh(sizes):
    return make_mesh(**sizes)


def _spec(array) -> tuple:
    """An array's partition spec as a tuple with one entry per dimension (trailing Nones filled in)."""
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


def _batches(steps=3, rows=8, seq=16):
    """Fixed packed batches `[1, rows, seq]`: two segments per row, a padded tail, a masked prompt."""
    r = np.random.RandomState(0)
    out = []
    for _ in range(steps):
        ids = r.randint(0, 128, (rows, seq)).astype(np.int32)
        seg = np.concatenate([np.ones((rows, 7)), 2 * np.ones((rows, 6)), np.zeros((rows, 3))], 1).astype(np.int32)
        pos = np.concatenate([np.arange(7), np.arange(6), np.zeros(3)]).astype(np.int32)[None].repeat(rows, 0)
        labels = np.where(seg > 0, ids, -100)
        labels[:, [0, 7]] = -100
        out.append(dict(input_ids=ids, labels=labels, segment_ids=seg, positions=pos))
    return out


def _trainer(path, mesh):
    """(train_step, state, frozen) for full fine-tuning of the model on `mesh`."""
    model = swift_jax.load_model(path, mesh=mesh)
    graphdef, params, rng, frozen = split_model(model, nnx.Param)
    optimizer = make_optimizer(learning_rate_schedule("cosine", 1e-2, 3, 1), weight_decay=0.1, adam_beta1=0.9,
                               adam_beta2=0.95, max_grad_norm=1.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, init_optimizer_state(optimizer, params, mesh), rng)
    step = make_train_step(graphdef, optimizer, LanguageModeling(loss_chunk_size=8))
    return lambda state, frozen, batches: step(state, frozen, None, batches), state, frozen


def _losses(path, mesh, batches, state=None):
    losses = []
    with jax.set_mesh(mesh):  # as the trainer: the state is created under the mesh
        step_fn, fresh, frozen = _trainer(path, mesh)
        state = fresh if state is None else state
        for batch in batches:
            state, metrics = step_fn(state, frozen, stack_batches([batch], list(batch), mesh))
            losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def reference(base):
    return _losses(base, _mesh(MESHES["single"]), _batches())[0]


@pytest.mark.parametrize("name", [n for n in MESHES if n != "single"])
def test_same_steps_on_every_mesh_give_the_same_losses(base, reference, name):
    mesh = _mesh(MESHES[name])
    losses, state = _losses(base, mesh, _batches())
    np.testing.assert_allclose(losses, reference, atol=1e-5, rtol=0)
    assert reference[2] < reference[0]  # the steps really train
    q = state.params["model"]["stacks"][0]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]  # [layers, ...]
    assert _spec(q) == (None, "fsdp", "tensor" if "tp2" in name else None)


def test_checkpoint_from_one_mesh_resumes_on_another(base, reference, tmp_path):
    batches = _batches()
    _, state = _losses(base, _mesh(MESHES["fsdp8"]), batches[:2])
    manager = ckpt.checkpoint_manager(str(tmp_path), async_save=False)
    ckpt.save(manager, 2, state, {"position": 2})
    manager.wait_until_finished()
    manager.close()

    other = _mesh(MESHES["dp2-fsdp2-tp2"])
    with jax.set_mesh(other):
        _, abstract, _ = _trainer(base, other)
        restored, data_state = ckpt.restore(str(tmp_path / "checkpoint-2"), abstract)
    assert data_state == {"position": 2} and int(restored.step) == 2
    kernel = restored.params["model"]["stacks"][0]["layers"][0]["mlp"]["down_proj"]["kernel"][...]
    assert _spec(kernel) == (None, "tensor", "fsdp")  # resharded onto the new mesh
    losses, _ = _losses(base, other, batches[2:], state=restored)
    assert abs(losses[0] - reference[2]) < 1e-5
