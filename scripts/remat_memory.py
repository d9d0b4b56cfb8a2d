"""Activation memory per remat policy: the compiled train step's temp memory, from XLA's memory analysis.

    python scripts/remat_memory.py                       # CPU: 8-layer tiny llama, scanned layers
    python scripts/remat_memory.py --layers 4 --unrolled

For each `--gradient_checkpointing` value (false, true and every policy of `models/remat.py`) the
trainer's full fine-tuning step (`make_train_step`, AdamW) is lowered and compiled, and
`compiled.memory_analysis()` gives the temp (activation and scratch) bytes, besides the argument and
output bytes (parameters, optimizer state, batch), which no policy changes. A policy the platform cannot
compile is reported as unsupported with the compiler's message.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from swift_jax.models.remat import REMAT_POLICIES
from swift_jax.modeling import init_model
from swift_jax.trainer.method import LanguageModeling
from swift_jax.trainer.step import TrainState, make_train_step, split_model

SETTINGS = (False, True, *REMAT_POLICIES)


def compiled_memory(args, remat) -> dict:
    """Temp / argument / output bytes of the compiled train step under one remat setting."""
    hf = dict(
        model_type="llama",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.seq,
    )
    model = init_model(hf, scan_layers=not args.unrolled)
    model.model.remat = remat
    optimizer = optax.adamw(1e-4)
    graphdef, params, rng, frozen = split_model(model, nnx.Param)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
    ids = np.zeros((1, args.batch, args.seq), np.int32)
    positions = np.broadcast_to(np.arange(args.seq, dtype=np.int32), ids.shape)
    batches = jax.tree.map(jnp.asarray, dict(input_ids=ids, labels=ids, segment_ids=np.ones_like(ids), positions=positions))
    memory = make_train_step(graphdef, optimizer, LanguageModeling()).lower(state, frozen, None, batches).compile().memory_analysis()
    return dict(temp=memory.temp_size_in_bytes, arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--unrolled", action="store_true", help="one module per layer instead of scanned layers")
    args = parser.parse_args()
    layout = "unrolled" if args.unrolled else "scanned"
    print(
        f"llama layers={args.layers} hidden={args.hidden} vocab={args.vocab} batch={args.batch}x{args.seq} fp32, "
        f"{layout} layers, AdamW full fine-tuning, device={jax.devices()[0].platform}"
    )
    print(f"{'gradient_checkpointing':<34} {'temp MiB':>9} {'vs false':>9} {'args MiB':>9}")
    baseline = None
    for remat in SETTINGS:
        name = str(remat).lower()
        try:
            m = compiled_memory(args, remat)
        except Exception as e:  # noqa: BLE001 - the platform's refusal is the figure to report
            print(f"{name:<34} unsupported on {jax.devices()[0].platform}: {str(e).splitlines()[0][:120]}")
            continue
        baseline = baseline or m["temp"]
        print(f"{name:<34} {m['temp'] / 2**20:>9.2f} {m['temp'] / baseline:>9.2f} {m['arguments'] / 2**20:>9.2f}")


if __name__ == "__main__":
    main()
