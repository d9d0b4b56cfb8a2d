"""One compiled loss-and-gradient step of a model on a mesh, for the tests that compare a sharded layout
(sequence / expert parallelism) with one device."""

import jax
import numpy as np
from flax import nnx

import swift_jax
from swift_jax.trainer.step import split_model
from swift_jax.trainer.trainer import device_batch


def loss_grads_hlo(path, mesh, batch: dict, method, remat: bool = False):
    """`(loss, gradients as host arrays, compiled HLO text)` of `method`'s mean loss on one batch on `mesh`."""
    with jax.set_mesh(mesh):
        model = swift_jax.load_model(path, mesh=mesh)
        model.model.remat = remat  # the trainer's default is True: the sharded runs check it too
        graphdef, params, rng, frozen = split_model(model, nnx.Param)

        def loss(params, batch):
            out = method.loss(nnx.merge(graphdef, params, rng, frozen), batch, None)
            return out.loss_sum / out.count

        placed = device_batch(batch, list(batch), mesh)
        step = jax.jit(jax.value_and_grad(loss)).lower(params, placed).compile()  # compiled once, HLO read from it
        value, grads = step(params, placed)
        hlo = step.as_text()
    return float(value), jax.tree.map(np.asarray, nnx.to_pure_dict(grads)), hlo


def max_difference(a, b) -> float:
    """The largest absolute difference between two gradient trees."""
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))
