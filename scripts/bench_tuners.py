"""The tuner table: peak memory, tokens/s and final loss of LoRA, DoRA, rsLoRA, LoRA+, PiSSA, QLoRA and full
fine-tuning on the same model and task, in one run.

    python scripts/bench_tuners.py                     # CPU: a small Qwen2-architecture model
    python scripts/bench_tuners.py --preset gpu-0.5b   # one GPU: Qwen2.5-0.5B architecture, bf16

Every tuner trains the same randomly initialised model (Qwen2 architecture, bench_train.py's presets) on the
same learnable synthetic task (each row a sequence `t[i+1] = (a * t[i] + b) mod vocab` from a random start;
a and b fixed), through the trainer's own code: `apply_tuner` on ms-swift-style arguments, `make_optimizer`
(LoRA+ ratio, freeze masks) and the jit train step. Adapters: rank 8, alpha 32, all-linear, no dropout.
Each tuner runs in its own subprocess (clean peak-memory figures); warm-up steps are excluded from tokens/s
(median over the timed steps); the final loss is the mean of the last 3 steps' losses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import PRESETS, _peak_memory_bytes  # noqa: E402

TUNERS = {
    "LoRA": dict(tuner_type="lora"),
    "DoRA": dict(tuner_type="lora", use_dora=True),
    "rsLoRA": dict(tuner_type="lora", use_rslora=True),
    "LoRA+ (16)": dict(tuner_type="lora", lorap_lr_ratio=16.0),
    "PiSSA": dict(tuner_type="lora", init_weights="pissa"),
    "QLoRA (nf4)": dict(tuner_type="qlora", quant_bits=4),
    "full": dict(tuner_type="full"),
}


def task_batches(preset: dict, num_steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`num_steps` batches `[1, rows, max_length]` of the affine-recurrence task (every token a target)."""
    vocab, rows, length = preset["model"]["vocab_size"], preset["rows_per_step"], preset["max_length"]
    r = np.random.RandomState(seed)
    out = []
    for _ in range(num_steps):
        ids = np.zeros((rows, length), np.int64)
        ids[:, 0] = r.randint(0, vocab, rows)
        for i in range(1, length):
            ids[:, i] = (5 * ids[:, i - 1] + 3) % vocab
        ids = ids.astype(np.int32)
        out.append(dict(input_ids=ids[None], labels=ids[None], segment_ids=np.ones_like(ids)[None],
                        positions=np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape)[None].copy()))
    return out


def run(preset: dict, tuner: str, lr: float, full_lr: float) -> dict:
    """Train one tuner; its tokens/s, peak memory and final loss."""
    import jax
    import jax.numpy as jnp
    import transformers

    from swift_jax.config import TrainArguments, TunerArgs
    from swift_jax.modeling import init_model
    from swift_jax.trainer.method import LanguageModeling
    from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
    from swift_jax.trainer.setup import apply_tuner
    from swift_jax.trainer.step import TrainState, make_train_step, split_model

    spec = TUNERS[tuner]
    full = spec["tuner_type"] == "full"
    hf_config = transformers.Qwen2Config(**preset["model"]).to_dict()
    model = init_model(hf_config, dtype=preset["dtype"], seed=0, param_dtype="float32" if full else None)
    model.model.remat = True
    args = TrainArguments(tuner=TunerArgs(lora_rank=8, lora_alpha=32.0, lora_dropout=0.0, **spec))
    plan = apply_tuner(model, args)
    graphdef, params, rng, frozen = split_model(model, plan.trainable)
    optimizer = make_optimizer(learning_rate_schedule("constant", full_lr if full else lr, 1, 0), weight_decay=0.1,
                               adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
                               lorap_lr_ratio=args.tuner.lorap_lr_ratio, masks=plan.masks)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
    step = make_train_step(graphdef, optimizer, LanguageModeling(loss_chunk_size=1024))
    batches = task_batches(preset, preset["warmup"] + preset["steps"])
    times, losses = [], []
    for batch in batches:
        device_batch = jax.device_put(batch)
        start = time.perf_counter()
        state, metrics = step(state, frozen, None, device_batch)
        losses.append(float(metrics["loss"]))  # blocks until the step is done
        times.append(time.perf_counter() - start)
    tokens = preset["rows_per_step"] * preset["max_length"]
    memory = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", _peak_memory_bytes())
    trainable = sum(int(x.size) for x in jax.tree.leaves(state.params))
    return {
        "tokens_per_sec": statistics.median(tokens / t for t in times[preset["warmup"] :]),
        "peak_memory_mb": memory / 1e6,
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-3:])),
        "trainable": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the preset's warm-up")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="adapters' learning rate")
    parser.add_argument("--full_learning_rate", type=float, default=1e-4, help="full fine-tuning's learning rate")
    parser.add_argument("--tuner", choices=sorted(TUNERS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset], steps=args.steps)
    if args.tuner:  # child process: one tuner, JSON out
        print("RESULT " + json.dumps(run(preset, args.tuner, args.learning_rate, args.full_learning_rate)))
        return
    print(f"preset {args.preset}: {json.dumps(preset['model'])}, {preset['rows_per_step']} x {preset['max_length']} tokens/step, "
          f"{args.steps} steps (+{preset['warmup']} warm-up), lr {args.learning_rate} (full {args.full_learning_rate})")
    print("| tuner | trainable params | peak memory (MB) | tokens/s | loss step 1 | final loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for tuner in TUNERS:
        cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps), "--tuner", tuner,
               "--learning_rate", str(args.learning_rate), "--full_learning_rate", str(args.full_learning_rate)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"| {tuner} | failed: {out.stderr.strip()[-300:]} |||||")
            continue
        r = json.loads(line[7:])
        print(f"| {tuner} | {r['trainable']:,} | {r['peak_memory_mb']:.0f} | {r['tokens_per_sec']:.0f} | {r['first_loss']:.3f} | {r['final_loss']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
