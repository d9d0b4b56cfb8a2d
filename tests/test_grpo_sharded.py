"""GRPO on a sharded mesh (8 fake CPU devices, fsdp x tensor): the rollout and a GRPO step give what one
device gives: the same greedy completions, log-probs, loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import swift_jax
from swift_jax.parallel import make_mesh
from swift_jax.rlhf.grpo.data import PromptBatches

# the tokenizer fixture and the autouse `low_ids` reward registration come with the method builder
from test_grpo import CONFIG, ROWS, _method, low_ids_reward, tokenizer  # noqa: F401


def _loss_and_grads(method, model, batch):
    graphdef, params = nnx.split(model)

    def loss_fn(p):
        out = method.loss(nnx.merge(graphdef, p), batch, None)
        return out.loss_sum / out.count

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    return float(loss), {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(grads)}


def test_rollout_and_step_on_a_mesh_equal_one_device(tokenizer):
    mesh = make_mesh(fsdp_size=4, tensor_parallel_size=2)
    single = swift_jax.init_model(CONFIG, dtype="float32", seed=0)  # on the default device
    sharded = swift_jax.init_model(CONFIG, dtype="float32", seed=0, mesh=mesh)
    q = sharded.model.stacks[0].layers[0].self_attn.q_proj.kernel[...]
    assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    prompts = next(PromptBatches(ROWS, tokenizer, num_generations=4, batch_size=16, shuffle=False).batches())

    # greedy rollouts (top_k 1): the same completions and log-probs
    greedy = [_method(tokenizer, top_k=1).make_batches_for(m, [prompts], step=1)[0] for m in (single, sharded)]
    np.testing.assert_array_equal(greedy[0]["completion_ids"], greedy[1]["completion_ids"])
    np.testing.assert_array_equal(greedy[0]["completion_mask"], greedy[1]["completion_mask"])
    np.testing.assert_allclose(greedy[0]["old_logps"], greedy[1]["old_logps"], atol=1e-5)
    np.testing.assert_allclose(greedy[0]["ref_logps"], greedy[1]["ref_logps"], atol=1e-5)

    # the update on both layouts of the same weights: the greedy rollout's batch with advantages of both signs
    method = _method(tokenizer, top_k=1)
    batch = dict(greedy[1], advantages=np.linspace(-0.5, 1.5, 16, dtype=np.float32))
    batch = {k: jnp.asarray(batch[k]) for k in method.batch_keys}
    loss_1, grads_1 = _loss_and_grads(method, single, batch)
    with jax.set_mesh(mesh):
        loss_8, grads_8 = _loss_and_grads(method, sharded, batch)
    assert loss_8 == pytest.approx(loss_1, abs=1e-5) and abs(loss_1) > 1e-3
    assert grads_1.keys() == grads_8.keys() and max(np.abs(g).max() for g in grads_1.values()) > 1e-3
    for name in grads_1:
        np.testing.assert_allclose(grads_8[name], grads_1[name], atol=1e-5, err_msg=name)
