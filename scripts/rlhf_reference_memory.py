"""What the compiled DPO train step holds for its reference: a frozen copy (full fine-tuning), nothing (LoRA:
adapters off), nothing with --precompute_ref_log_probs (the values ride on the batch, `ref_logps`).

    python scripts/rlhf_reference_memory.py [--model tests/golden/rlhf_tiny/base]

Sets up the trainer for each case (no training), lowers its train step on one batch and prints XLA's argument
bytes and the bytes of the reference state the step receives (`extra`).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import numpy as np

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.rlhf.__main__ import RLHFArguments, method_of
from swift_jax.trainer.trainer import Trainer, stack_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "swift_jax", "assets", "preference", "train.jsonl#16")


def measure(model: str, *flags: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as out:
        args = parse_config(RLHFArguments, ["--model", model, "--dataset", DATA, "--max_length", "64", "--max_steps", "1",
                                            "--report_to", "none", "--output_dir", out, *flags], aliases=ALIASES).validate()
        trainer = Trainer(args, method_of(args))
        trainer.setup()
        host, _ = trainer.method.make_batches(trainer.context, [next(trainer.iterator) for _ in range(trainer.accum)])
        batch = stack_batches(host, trainer.method.batch_keys, trainer.mesh)
        compiled = trainer.train_step.lower(trainer.state, trainer.frozen, trainer.extra, batch).compile()
        extra = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(trainer.extra))
        trainer.manager.close()
        jax.set_mesh(None)
        return compiled.memory_analysis().argument_size_in_bytes, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(ROOT, "tests", "golden", "rlhf_tiny", "base"))
    model = parser.parse_args().model
    for name, flags in [("full fine-tuning, frozen copy", ["--tuner_type", "full"]),
                        ("full fine-tuning, --precompute_ref_log_probs", ["--tuner_type", "full", "--precompute_ref_log_probs", "true"]),
                        ("LoRA, adapters off", []),
                        ("LoRA, --precompute_ref_log_probs", ["--precompute_ref_log_probs", "true"])]:
        arguments, extra = measure(model, "--dtype", "float32", *flags)
        print(f"{name:48s} step arguments {arguments / 1e6:8.3f} MB, reference state {extra / 1e6:8.3f} MB")


if __name__ == "__main__":
    main()
