"""Training throughput: swift_jax (packed / padded) against a plain PyTorch `transformers` + `peft` loop.

    python scripts/bench_train.py                      # CPU: tiny Qwen2-architecture model
    python scripts/bench_train.py --preset gpu-0.5b    # one GPU: Qwen2.5-0.5B architecture, bf16

Every variant trains the same model (random weights, Qwen2 architecture), the same LoRA (rank 8, alpha 32,
all-linear), on the same synthetic chat-like samples (log-normal lengths, loss on the second part of each
sample). A step is one global token budget, as in the trainer: `rows_per_step` rows of `max_length`
slots filled from one sample stream (synthetic_steps), and every variant trains on exactly those
samples per step, packed into the rows or one per row, padded. Each variant runs in its own subprocess (clean memory figures);
warm-up steps (compilation) are excluded and reported separately; the step time is the median of the
timed steps. Tokens/s counts real (non-padding) tokens. The last line reads `ratio packed/pytorch: R`.

Variants: (a) swift_jax packed, (b) swift_jax padded, (c) PyTorch padded to the longest sample of each
batch (the way most users run it), (d) PyTorch packed where transformers supports it (flash-attention
position_ids packing: CUDA only), (e) ms-swift `swift sft` is not measured by this script (its
HF Trainer loop is (c) plus logging and data collation; see scripts/parity_ms_swift.py for the side-by-side run).
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

PRESETS = {
    "cpu": dict(
        model=dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2),
        max_length=512, rows_per_step=4, mean_length=96, steps=10, warmup=2, dtype="float32",
    ),
    "ci": dict(  # a smoke run of every variant (tests/test_benchmarks.py); its figures mean nothing
        model=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2),
        max_length=128, rows_per_step=2, mean_length=32, steps=2, warmup=1, dtype="float32",
    ),
    "gpu-0.5b": dict(
        model=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
        max_length=4096, rows_per_step=16, mean_length=600, steps=10, warmup=3, dtype="bfloat16",
    ),
    "gpu-1.5b": dict(
        model=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
        max_length=4096, rows_per_step=16, mean_length=600, steps=10, warmup=3, dtype="bfloat16",
    ),
}
VARIANTS = ("swift_jax packed", "swift_jax padded", "pytorch padded", "pytorch packed")


def synthetic_steps(preset: dict, num_steps: int, seed: int = 0) -> list[list[list[tuple[np.ndarray, np.ndarray]]]]:
    """Per step, `rows_per_step` rows, each a list of (input_ids, labels) samples; one global token budget.

    Samples (log-normal lengths, labels -100 on the prompt) arrive as a stream and go first-fit into the
    step's open rows of `max_length`; the first sample that fits nowhere closes the step and opens the
    next one, as the trainer's packer emits its bins. Every variant trains on exactly these samples per
    step: packed as the rows are, or one sample per row, padded.
    """
    rng = np.random.default_rng(seed)
    vocab, max_len, num_rows = preset["model"]["vocab_size"], preset["max_length"], preset["rows_per_step"]

    def sample():
        n = int(np.clip(rng.lognormal(np.log(preset["mean_length"]), 0.8), 8, max_len))
        ids = rng.integers(3, vocab, n, dtype=np.int32)
        labels = ids.copy()
        labels[: max(1, int(0.4 * n))] = -100  # the "prompt" is not trained; first token never is
        return ids, labels

    steps, pending = [], sample()
    while len(steps) < num_steps:
        rows, space = [[] for _ in range(num_rows)], [max_len] * num_rows
        while (slot := next((r for r, free in enumerate(space) if free >= len(pending[0])), None)) is not None:
            rows[slot].append(pending)
            space[slot] -= len(pending[0])
            pending = sample()
        steps.append(rows)
    return steps


def pad_batch(samples, length: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad samples to `length` (default: the longest) as one row each."""
    length = length or max(len(ids) for ids, _ in samples)
    out = {k: np.zeros((len(samples), length), np.int32) for k in ("input_ids", "segment_ids", "positions")}
    out["labels"] = np.full((len(samples), length), -100, np.int32)
    for row, (ids, labels) in enumerate(samples):
        n = len(ids)
        out["input_ids"][row, :n], out["labels"][row, :n] = ids, labels
        out["segment_ids"][row, :n], out["positions"][row, :n] = 1, np.arange(n)
    return out


def pack_batch(rows, max_length: int) -> dict[str, np.ndarray]:
    """Rows of samples (see synthetic_steps) laid out in `max_length` slots with segment ids and positions."""
    out = {k: np.zeros((len(rows), max_length), np.int32) for k in ("input_ids", "segment_ids", "positions")}
    out["labels"] = np.full((len(rows), max_length), -100, np.int32)
    for r, members in enumerate(rows):
        start = 0
        for k, (ids, labels) in enumerate(members):
            end = start + len(ids)
            out["input_ids"][r, start:end], out["labels"][r, start:end] = ids, labels
            out["segment_ids"][r, start:end], out["positions"][r, start:end] = k + 1, np.arange(len(ids))
            start = end
    return out


def _samples(rows) -> list[tuple[np.ndarray, np.ndarray]]:
    return [s for row in rows for s in row]


def _peak_memory_bytes() -> int:
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def run_pytorch(preset: dict, packed: bool) -> dict:
    """A plain transformers + peft LoRA loop, as most PyTorch users run it."""
    import peft
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    if packed and not cuda:
        return {"skipped": "transformers packs sequences (position_ids) only with flash-attention on CUDA"}
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if preset["dtype"] == "bfloat16" else torch.float32
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**preset["model"])
    attn = "flash_attention_2" if packed else "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).to(device)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    steps = synthetic_steps(preset, preset["warmup"] + preset["steps"])
    times, real_tokens = [], []
    for rows in steps:
        if packed:
            batch = pack_batch(rows, preset["max_length"])
            flat = {k: v.reshape(1, -1) for k, v in batch.items()}
            kwargs = dict(input_ids=flat["input_ids"], position_ids=flat["positions"], labels=flat["labels"])
        else:
            batch = pad_batch(_samples(rows))
            kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["segment_ids"], labels=batch["labels"])
        kwargs = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in kwargs.items()}
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        real_tokens.append(int((batch["segment_ids"] > 0).sum()))
    memory = torch.cuda.max_memory_allocated() if cuda else _peak_memory_bytes()
    return _summary(times, real_tokens, preset["warmup"], memory)


def run_swift_jax(preset: dict, packed: bool) -> dict:
    """swift_jax's own jit LoRA train step (the trainer's) on packed rows or padded rows.

    Padded rows are padded as the data pipeline pads them: to the step's longest sample rounded up to a
    multiple of 128 (`swift_jax.data.batching.bucket_length`), so the step compiles once per bucket.
    """
    import jax
    import jax.numpy as jnp
    import transformers
    from flax import nnx

    from swift_jax.modeling import init_model
    from swift_jax.trainer.optim import learning_rate_schedule, make_optimizer
    from swift_jax.trainer.method import LanguageModeling
    from swift_jax.trainer.step import TrainState, make_train_step, split_model
    from swift_jax.tuners import loraize

    hf_config = transformers.Qwen2Config(**preset["model"]).to_dict()
    model = init_model(hf_config, dtype=preset["dtype"], seed=0)
    loraize(model, rank=8, alpha=32, dropout=0.0, rngs=nnx.Rngs(0))
    graphdef, params, rng, frozen = split_model(model, nnx.LoRAParam)
    optimizer = make_optimizer(learning_rate_schedule("constant", 1e-4, 1, 0), weight_decay=0.0,
                               adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)
    train_step = make_train_step(graphdef, optimizer, LanguageModeling())
    steps = synthetic_steps(preset, preset["warmup"] + preset["steps"])
    max_len = preset["max_length"]
    from swift_jax.data.batching import bucket_length

    width = lambda rows: bucket_length(max(len(ids) for ids, _ in _samples(rows)), max_len)
    batches = [pack_batch(rows, max_len) if packed else pad_batch(_samples(rows), width(rows)) for rows in steps]
    # warm-up compiles every bucket once (a run compiles each bucket once, over thousands of steps): the first
    # step of each width goes first
    widths = [b["input_ids"].shape[1] for b in batches]
    first = sorted({w: i for i, w in reversed(list(enumerate(widths)))}.values())
    batches = [batches[i] for i in first] + [b for i, b in enumerate(batches) if i not in first]
    warmup = max(preset["warmup"], len(first))
    rows = max(len(b["input_ids"]) for b in batches)  # a static row count per step: one compilation per width
    times, real_tokens = [], []
    for batch in batches:
        grow = rows - len(batch["input_ids"])  # empty rows (segment 0) fill the static batch shape
        batch = {k: np.pad(v, ((0, grow), (0, 0)), constant_values=-100 if k == "labels" else 0)[None] for k, v in batch.items()}
        device_batch = jax.device_put(batch)
        start = time.perf_counter()
        state, metrics = train_step(state, frozen, None, device_batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
        real_tokens.append(int((batch["segment_ids"] > 0).sum()))
    memory = _peak_memory_bytes()
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: the device's own peak
        memory = stats["peak_bytes_in_use"]
    return _summary(times, real_tokens, warmup, memory)


def _summary(times: list[float], real_tokens: list[int], warmup: int, memory: int) -> dict:
    timed, tokens = times[warmup:], real_tokens[warmup:]
    step = statistics.median(timed)
    return {
        "tokens_per_sec": statistics.median(t / s for t, s in zip(tokens, timed)),
        "step_ms": 1000 * step,
        "warmup_s": sum(times[:warmup]),
        "peak_memory_mb": memory / 1e6,
    }


RUNNERS = {
    "swift_jax packed": lambda p: run_swift_jax(p, packed=True),
    "swift_jax padded": lambda p: run_swift_jax(p, packed=False),
    "pytorch padded": lambda p: run_pytorch(p, packed=False),
    "pytorch packed": lambda p: run_pytorch(p, packed=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: the preset's)")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    if args.steps:
        preset["steps"] = args.steps
    if args.variant:  # child process: run one variant, print JSON
        result = RUNNERS[args.variant](preset)
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--preset", args.preset, "--variant", variant]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        results[variant] = json.loads(line[7:]) if line else {"skipped": f"failed: {out.stderr.strip()[-300:]}"}
    base = results["pytorch padded"].get("tokens_per_sec")
    print(f"preset {args.preset}: {json.dumps(PRESETS[args.preset]['model'])}")
    print(f"{'variant':18s} {'real tok/s':>11s} {'step ms':>9s} {'warm-up s':>10s} {'peak MB':>9s} {'tok/s ratio':>12s}")
    for variant, r in results.items():
        if "skipped" in r:
            print(f"{variant:18s} skipped: {r['skipped']}")
            continue
        ratio = r["tokens_per_sec"] / base if base else float("nan")
        print(f"{variant:18s} {r['tokens_per_sec']:11.0f} {r['step_ms']:9.1f} {r['warmup_s']:10.1f} {r['peak_memory_mb']:9.0f} {ratio:12.2f}")
    packed = results["swift_jax packed"].get("tokens_per_sec")
    print(f"ratio packed/pytorch: {packed / base:.2f}" if packed and base else "ratio packed/pytorch: n/a")


if __name__ == "__main__":
    main()
