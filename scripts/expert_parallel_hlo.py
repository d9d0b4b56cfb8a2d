"""What one device holds and computes in an MoE training step, read from the compiled HLO.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/expert_parallel_hlo.py

A randomly initialised qwen3_moe (8 experts, top-2) takes one loss-and-gradient step on one device and on
8 devices with `--expert_parallel_size 4 --fsdp_size 2`, once with the all-to-all dispatch
(models/expert_parallel.py) and once with it switched off (GSPMD partitioning the one-device program).
For each it prints the per-device expert weight shape (entry parameters), the lengths of the argsorts
(the tokens a device sorts by expert), the row counts of the grouped matmuls and the collectives.
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import swift_jax.models.expert_parallel as expert_parallel
import swift_jax.models.moe as moe
from swift_jax.modeling import init_model
from swift_jax.parallel import make_mesh
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.step import split_model
from swift_jax.trainer.trainer import device_batch


def compiled_step(args, mesh) -> str:
    """HLO text of the compiled loss-and-gradient step of one batch on `mesh`."""
    hf = dict(model_type="qwen3_moe", vocab_size=256, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
              moe_intermediate_size=args.mlp, num_experts=args.experts, num_experts_per_tok=2, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=args.seq)
    method = LanguageModeling(loss_chunk_size=args.seq)
    with jax.set_mesh(mesh):
        model = init_model(hf, mesh=mesh)
        graphdef, params, rng, frozen = split_model(model, nnx.Param)
        ids = np.random.RandomState(0).randint(0, 256, (args.rows, args.seq)).astype(np.int32)
        host = dict(input_ids=ids, labels=ids, segment_ids=np.ones_like(ids),
                    positions=np.broadcast_to(np.arange(args.seq, dtype=np.int32), ids.shape))
        batch = device_batch(host, list(host), mesh)

        def loss(params):
            out = method.loss(nnx.merge(graphdef, params, rng, frozen), batch, None)
            return out.loss_sum / out.count

        return jax.jit(jax.value_and_grad(loss)).lower(params).compile().as_text()


def summary(hlo: str, args) -> dict:
    expert_weight = sorted(set(re.findall(r"f32\[(\d+,\d+,\d+,%d)\]\{[\d,]+\} parameter" % args.mlp, hlo)))
    sorts = sorted({int(n) for n in re.findall(r"= \(?[su]32\[(\d+)\][^=]*? sort\(", hlo)})
    rows = sorted({int(n) for n in re.findall(r"= f32\[(\d+),%d\]\{[\d,]+\} fusion" % args.mlp, hlo)})
    collectives = sorted(set(re.findall(r"(all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)\(", hlo)))
    return dict(expert_weight=expert_weight, sort_lengths=sorts, grouped_matmul_rows=rows, collectives=collectives)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--mlp", type=int, default=48)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    args = parser.parse_args()
    copies = args.rows * args.seq * 2
    print(f"qwen3_moe {args.experts} experts top-2, embed {args.hidden}, expert mlp {args.mlp}, "
          f"batch {args.rows}x{args.seq} = {copies} token copies; expert weights [layers, experts, embed, mlp]")
    runs = [("1 device", make_mesh(fsdp_size=1, devices=jax.devices()[:1])),
            ("ep4 x fsdp2, all-to-all", make_mesh(expert_parallel_size=4, fsdp_size=2))]
    for name, mesh in runs:
        print(f"{name:<28} {summary(compiled_step(args, mesh), args)}")
    off = lambda num_experts, num_tokens: 1
    moe.expert_shards = expert_parallel.expert_shards = off  # the GSPMD-only program, for comparison
    print(f"{'ep4 x fsdp2, GSPMD only':<28} {summary(compiled_step(args, runs[1][1]), args)}")


if __name__ == "__main__":
    main()
