"""`python -m swift_jax.rlhf --rlhf_type dpo ...` (and `swift-jax rlhf`): preference training, ms-swift's `swift rlhf`.

Every SFT argument applies (model, LoRA/QLoRA/full, data, packing, mesh, checkpoints, resume) plus RLHFArgs
(`--rlhf_type`, `--beta`, `--loss_type`, ...); the shared Trainer runs the method of `--rlhf_type`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

from swift_jax.config import ALIASES, TrainArguments
from swift_jax.rlhf.args import RLHFArgs


@dataclasses.dataclass
class RLHFArguments(TrainArguments):
    """TrainArguments plus the preference-training group (flat flags, as every group)."""

    rlhf: RLHFArgs = dataclasses.field(default_factory=RLHFArgs)

    def validate(self) -> "RLHFArguments":
        super().validate()
        self.rlhf.validate(self.tuner.tuner_type)
        return self


def method_of(args: RLHFArguments):
    """The preference method `args` ask for."""
    from swift_jax.rlhf.methods import make_method

    return make_method(args.rlhf, model_path=args.model_args.model, dtype=args.model_args.dtype,
                       tuner_type=args.tuner.tuner_type, loss_chunk_size=args.training.loss_chunk_size)


def run_command(argv: Sequence[str] | None) -> dict[str, Any]:
    from swift_jax.cli import parse_config
    from swift_jax.train import train

    args = parse_config(RLHFArguments, argv, aliases=ALIASES).validate()
    return train(args, method_of(args))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command-line entry: errors a user can fix are printed as one line with exit status 1."""
    try:
        return run_command(argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
