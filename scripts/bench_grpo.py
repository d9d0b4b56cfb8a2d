"""GRPO throughput: rollout tokens/s (sampling) and update tokens/s (policy loss forward + backward + AdamW).

    python scripts/bench_grpo.py [--hidden 256 --layers 4 --vocab 4096] [--prompts 4 --generations 8] [--completion 128]

Builds a random float32 Llama-architecture model, rolls out `--generations` completions for each of
`--prompts` prompts (64-token prompt width, eos disabled so every completion is `--completion` long), scores
them with a dense reward, and times one rollout and one full-batch update after a warm-up that compiles
both. Also prints both compiled programs' memory (`swift_jax/rlhf/grpo/memory.py`). Prints a markdown row.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import swift_jax
from swift_jax.rewards import ORM, orms
from swift_jax.rlhf.grpo import GRPO
from swift_jax.rlhf.grpo.args import GRPOArgs
from swift_jax.rlhf.grpo.memory import check_memory, program_memory
from swift_jax.rlhf.grpo.rollout import pad_prompts


class LowIds(ORM):
    def __call__(self, completions, response_token_ids, **kwargs):
        return [float(np.mean(np.asarray(ids) < 100)) for ids in response_token_ids]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion", type=int, default=128)
    a = p.parse_args()
    cfg = dict(
        model_type="llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=a.layers, num_attention_heads=max(a.hidden // 64, 1), num_key_value_heads=max(a.hidden // 256, 1),
        max_position_embeddings=4096, tie_word_embeddings=False,
    )
    model = swift_jax.init_model(cfg, dtype="float32")
    orms["low_ids"] = LowIds
    args = GRPOArgs(num_generations=a.generations, max_completion_length=a.completion, reward_funcs=["low_ids"], beta=0.04)
    method = GRPO(args, eos_ids=())
    rows = a.prompts * a.generations
    rng = np.random.default_rng(0)
    ids, mask = pad_prompts([rng.integers(1, a.vocab, 40).tolist() for _ in range(a.prompts)], 64)
    host = [{"prompt_ids": np.repeat(ids, a.generations, 0), "prompt_mask": np.repeat(mask, a.generations, 0)}]

    graphdef, params = nnx.split(model)
    optimizer = optax.adamw(1e-5)
    opt_state = optimizer.init(params)

    def step(params, opt_state, batch):
        loss_fn = lambda p: (lambda out: out.loss_sum / out.count)(method.loss(nnx.merge(graphdef, p), batch, None))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    update = jax.jit(step, donate_argnums=(0, 1))
    times = {}
    for phase in ("warm-up", "timed"):
        start = time.perf_counter()
        (batch,) = method.make_batches_for(nnx.merge(graphdef, params), host)
        times["make_batches"] = time.perf_counter() - start
        tokens_per_sec = method.host_metrics["rollout_tokens_per_sec"]
        batch = jax.tree.map(jnp.asarray, batch)
        start = time.perf_counter()
        params, opt_state, loss = update(params, opt_state, batch)
        loss.block_until_ready()
        times["update"] = time.perf_counter() - start
    completion_tokens = int(batch["completion_mask"].sum())
    train_tokens = completion_tokens + int(batch["prompt_mask"].sum())
    memory = [
        method.rollout_memory(nnx.merge(graphdef, params), rows, 64),
        program_memory("update", update.lower(params, opt_state, batch).compile()),
    ]
    print(check_memory(memory))
    print("| device | model | rows x completion | rollout tokens/s | update tokens/s (prompt + completion) | make_batches s | update s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {jax.devices()[0].device_kind} | h{a.hidden} L{a.layers} V{a.vocab} | {rows} x {a.completion} | {tokens_per_sec:.0f} | "
        f"{train_tokens / times['update']:.0f} | {times['make_batches']:.2f} | {times['update']:.2f} |"
    )


if __name__ == "__main__":
    main()
