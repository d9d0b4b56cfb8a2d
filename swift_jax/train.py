"""`python -m swift_jax.train --config configs/X.yaml [--key value ...]`: supervised fine-tuning (`swift sft`).

A thin command: arguments -> `Trainer(args).train()` (swift_jax/trainer/trainer.py owns the loop).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments


def train(args: TrainArguments, method=None) -> dict[str, Any]:
    """Run one training job; returns the final metrics (also written to logging.jsonl)."""
    from swift_jax.trainer.trainer import Trainer

    return Trainer(args, method).train()


def run_command(argv: Sequence[str] | None, defaults: dict[str, Any] | None = None, command: str = "sft") -> dict[str, Any]:
    """Parse `argv` (YAML + flags) over the command's `defaults` and train."""
    args = parse_config(TrainArguments, argv, aliases=ALIASES, defaults=defaults, command=command).validate()
    return train(args)


def main(argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None, command: str = "sft") -> dict[str, Any]:
    """The command-line entry: errors a user can fix are printed as one line with exit status 1."""
    try:
        return run_command(argv, defaults, command)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
