"""Data pipeline figures: packing efficiency on log-normal lengths, and start-up time on a large dataset.

    python scripts/bench_data.py [--rows 100000] [--max_length 2048]

1. Packing: samples with log-normal token lengths (median 300, sigma 1, clipped to [8, max_length])
   through the same grain best-fit packer the pipeline uses; prints real tokens / slots.
2. Start-up: writes a synthetic `messages` JSONL of `--rows` rows (lengths log-normal too), then times
   build_data + the first batch (cold `datasets` cache, then warm), with packing, bundled tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import grain
import numpy as np


def packing_figure(max_length: int, n: int = 20000, bins: int = 64) -> float:
    from swift_jax.data.batching import pack, packing_efficiency

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, n).astype(int), 8, max_length)
    samples = [{"input_ids": np.ones(k, np.int32), "labels": np.ones(k, np.int32)} for k in lengths]
    rows = list(pack(grain.MapDataset.source(samples).to_iter_dataset(), max_length, 0, bins, seed=0, shuffle=True))
    return packing_efficiency(rows)


def startup_figure(rows: int, max_length: int, folder: str) -> tuple[float, float, dict]:
    from swift_jax.data import BUNDLED_TOKENIZER_DIR, DataArgs, build_data
    from swift_jax.modeling import load_tokenizer

    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog and then some more words to say".split()
    path = os.path.join(folder, "synthetic.jsonl")
    with open(path, "w") as f:
        for _ in range(rows):
            q = " ".join(rng.choice(words, int(np.clip(rng.lognormal(np.log(40), 0.8), 2, 600))))
            a = " ".join(rng.choice(words, int(np.clip(rng.lognormal(np.log(120), 0.8), 2, 1200))))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    tokenizer = load_tokenizer(BUNDLED_TOKENIZER_DIR)
    args = DataArgs(dataset=[path], max_length=max_length, packing=True, dataset_num_proc=2)
    times = []
    for _ in range(2):  # cold, then warm `datasets` cache
        start = time.perf_counter()
        pipe = build_data(args, tokenizer, batch_size=8)
        next(pipe.train_iterator())
        times.append(time.perf_counter() - start)
    return times[0], times[1], pipe.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max_length", type=int, default=2048)
    args = parser.parse_args()
    print(f"packing efficiency (log-normal lengths, max_length {args.max_length}, 64 bins): {packing_figure(args.max_length):.4f}")
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(folder, "cache"))
        cold, warm, stats = startup_figure(args.rows, args.max_length, folder)
    print(f"start-up until the first batch, {args.rows} rows: {cold:.1f} s cold cache, {warm:.1f} s warm")
    print(f"stats: {stats}")


if __name__ == "__main__":
    main()
