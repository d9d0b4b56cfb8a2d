"""Show what the model will be trained on: `python -m swift_jax.data.inspect --config X.yaml [--num_samples 3]`.

Prints a few rendered samples with the trained tokens highlighted (green on a terminal, else
between `[[` and `]]`), the length histogram, and the data statistics (drops, packing efficiency, steps
per epoch). The first thing to run when a template or a loss mask looks wrong. It reads the same
YAML/flags as `swift_jax.train` and needs only the tokenizer, not the weights.

`--dump FILE` instead writes exactly what training sees, one JSON line per input row (in file order with
`--dataset_shuffle false`, else in the first epoch's order): `input_ids`, `labels` (aligned, -100 where not
trained) and, when the loss_scale weighs tokens, `loss_scale` (aligned the same way); a row that cannot be
encoded, or that training drops, gets `{"error": "..."}`.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import grain
import numpy as np

from swift_jax.config import TrainArguments
from swift_jax.data.args import DataArgs
from swift_jax.data.errors import BadRows, DataError
from swift_jax.data.pipeline import build_data
from swift_jax.data.samples import SampleProcessor
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.sources import load_table
from swift_jax.data.templates import IGNORE


@dataclasses.dataclass
class InspectArguments(TrainArguments):
    num_samples: int = 3
    """How many rendered samples to print."""
    dump: str | None = None
    """Write every training row's input_ids / labels / loss_scale to this JSON-lines file (see the module doc)."""


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


DROP_MESSAGES = {
    "dropped_too_long": "longer than --max_length {max_length} (--truncation_strategy delete)",
    "dropped_no_target": "no trained token (no assistant turn, or all of it past --max_length)",
}


def dump_rows(data: DataArgs, tokenizer, path: str, seed: int) -> int:
    """Write what training sees for every row of `data.dataset` to `path` (JSON lines); returns the row count."""
    table = load_table(data.dataset, data.data_seed, BadRows(strict=False), LoadOptions.of(data))
    order = np.arange(len(table))
    if data.dataset_shuffle:  # the order of the training stream's first epoch
        order = np.asarray(list(grain.MapDataset.source(order).shuffle(seed=seed)))
    process = SampleProcessor(dataclasses.replace(data, strict=True), tokenizer)
    with open(path, "w") as f:
        for i in order:
            before = process.counters.as_dict()
            row, ref = table[int(i)]
            try:
                sample = process((row, ref))
            except DataError as e:
                record = {"error": str(e)}
            else:
                if sample is None:
                    after = process.counters.as_dict()
                    reason = next(k for k in DROP_MESSAGES if after[k] > before[k])
                    record = {"error": f"{ref}: dropped: " + DROP_MESSAGES[reason].format(max_length=data.max_length)}
                else:
                    record = {k: v.tolist() for k, v in sample.items()}
            f.write(json.dumps(record) + "\n")
    return len(order)


def main(argv: list[str] | None = None) -> dict:
    """Print samples, histogram and statistics for the data of a training config; returns the stats."""
    from swift_jax.cli import parse_config
    from swift_jax.modeling import load_tokenizer

    args = parse_config(InspectArguments, argv, command="sft")
    tokenizer = load_tokenizer(args.model_args.model)
    if args.dump:
        n = dump_rows(args.data, tokenizer, args.dump, args.training.seed)
        print(f"[INFO] {n} rows written to {args.dump}")
        return {"rows": n}
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
