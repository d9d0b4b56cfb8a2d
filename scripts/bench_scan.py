"""Scanned against unrolled decoder layers: compile time and step time of one full fine-tuning train step.

    python scripts/bench_scan.py                    # CPU: 32-layer tiny llama, both layouts in one run
    python scripts/bench_scan.py --layers 8 --steps 3

Both layouts train the same randomly initialised model (llama architecture, float32, AdamW) on the same
batch; the step is the trainer's (`swift_jax.trainer.step.make_train_step`). Compile time is
`lower(...).compile()` of that step; step time is the median of `--steps` timed steps after one warm-up,
the two layouts' steps alternating (so load from other processes on a shared machine hits both alike).
The last lines give scanned / unrolled ratios (below 1: scanned is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from swift_jax.modeling import init_model
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.step import TrainState, make_train_step, split_model


def hf_config(args) -> dict:
    return dict(
        model_type="llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4 * args.seq,
    )


def compile_step(args, scan_layers: bool):
    """`(run, compile seconds)` for one layout: `run()` does one train step and returns its loss."""
    model = init_model(hf_config(args), scan_layers=scan_layers, seed=0)
    model.model.remat = args.remat
    optimizer = optax.adamw(1e-4)
    graphdef, params, rng, frozen = split_model(model, nnx.Param)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
    ids = np.random.RandomState(0).randint(0, args.vocab, (1, args.batch, args.seq)).astype(np.int32)
    positions = np.broadcast_to(np.arange(args.seq, dtype=np.int32), ids.shape)
    batches = dict(input_ids=ids, labels=ids, segment_ids=np.ones_like(ids), positions=positions)
    batches = jax.tree.map(jnp.asarray, batches)
    start = time.perf_counter()
    compiled = make_train_step(graphdef, optimizer, LanguageModeling()).lower(state, frozen, None, batches).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run() -> float:
        holder[0], metrics = compiled(holder[0], frozen, None, batches)
        return float(metrics["loss"])

    return run, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--remat", default="false", help="true, false or a remat policy name")
    args = parser.parse_args()
    print(
        f"llama layers={args.layers} hidden={args.hidden} vocab={args.vocab} batch={args.batch}x{args.seq} fp32, "
        f"AdamW full fine-tuning, remat={args.remat}, device={jax.devices()[0].platform}"
    )
    runs, results = {}, {}
    for name, scan in (("unrolled", False), ("scanned", True)):
        runs[name], compile_s = compile_step(args, scan)
        results[name] = dict(compile_s=compile_s, times=[], loss=runs[name]())  # the first step warms up
    for _ in range(args.steps):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name]["loss"] = run()
            results[name]["times"].append(time.perf_counter() - start)
    for r in results.values():
        r["step_ms"] = 1000 * statistics.median(r["times"])
    print(f"{'layout':<10} {'compile s':>10} {'step ms':>10} {'loss':>10}")
    for name, r in results.items():
        print(f"{name:<10} {r['compile_s']:>10.2f} {r['step_ms']:>10.1f} {r['loss']:>10.4f}")
    scanned, unrolled = results["scanned"], results["unrolled"]
    print(f"ratio compile scanned/unrolled: {scanned['compile_s'] / unrolled['compile_s']:.3f}")
    print(f"ratio step scanned/unrolled: {scanned['step_ms'] / unrolled['step_ms']:.3f}")


if __name__ == "__main__":
    main()
