"""Show what the model will be trained on: `python -m swift_jax.data.inspect --config X.yaml [--num_samples 3]`.

Prints a few rendered samples with the trained tokens highlighted (green on a terminal, else
between `[[` and `]]`), the length histogram, and the data statistics (drops, packing efficiency, steps
per epoch). The first thing to run when a template or a loss mask looks wrong. It reads the same
YAML/flags as `swift_jax.train` and needs only the tokenizer, not the weights.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from swift_jax.config import TrainArguments
from swift_jax.data.pipeline import build_data
from swift_jax.data.templates import IGNORE


@dataclasses.dataclass
class InspectArguments(TrainArguments):
    num_samples: int = 3
    """How many rendered samples to print."""


def highlight(tokenizer, ids: np.ndarray, labels: np.ndarray, color: bool) -> str:
    """The decoded sample with the trained runs marked."""
    start, end = ("\033[32m", "\033[0m") if color else ("[[", "]]")
    out, run, trained = [], [], None
    for tok, lab in zip(ids.tolist(), labels.tolist()):
        if (lab != IGNORE) != trained and run:
            text = tokenizer.decode(run)
            out.append(f"{start}{text}{end}" if trained else text)
            run = []
        trained = lab != IGNORE
        run.append(tok)
    if run:
        text = tokenizer.decode(run)
        out.append(f"{start}{text}{end}" if trained else text)
    return "".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Print samples, histogram and statistics for the data of a training config; returns the stats."""
    from swift_jax.cli import parse_config
    from swift_jax.modeling import load_tokenizer

    args = parse_config(InspectArguments, argv)
    tokenizer = load_tokenizer(args.model_args.model)
    pipe = build_data(args.data, tokenizer, batch_size=args.training.per_device_train_batch_size, seed=args.training.seed)
    color = sys.stdout.isatty()
    shown = 0
    for i in range(len(pipe.train_table)):
        if shown >= args.num_samples:
            break
        sample = pipe.process(pipe.train_table[i])
        if sample is None:
            continue
        trained = int((sample["labels"] != IGNORE).sum())
        print(f"--- sample {i}: {len(sample['input_ids'])} tokens, {trained} trained ---")
        print(highlight(tokenizer, sample["input_ids"], sample["labels"], color))
        shown += 1
    print("--- sample lengths (tokens) ---")
    histogram = pipe.length_histogram()
    top = max(c for _, _, c in histogram) or 1
    for lo, hi, count in histogram:
        print(f"{lo:>7}-{hi:<7} {count:>7} {'#' * int(40 * count / top)}")
    print("--- statistics ---")
    for key, value in pipe.stats.items():
        print(f"{key}: {value}")
    return pipe.stats


if __name__ == "__main__":
    main()
