"""`python -m swift_jax.rlhf --rlhf_type dpo ...` (and `swift-jax rlhf`): ms-swift's `swift rlhf`.

Every SFT argument applies (model, LoRA/QLoRA/full, data, packing, mesh, checkpoints, resume) plus the group of
the requested `--rlhf_type`: RLHFArgs for preference training (dpo, simpo, orpo, cpo, kto, rm), GRPOArgs for
`grpo` (their flags share names with other meanings and defaults, e.g. `--beta` 0.1 vs 0.04, `--loss_type`, as
in ms-swift). The shared Trainer runs the method.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

from swift_jax.config import ALIASES, TrainArguments
from swift_jax.rlhf.args import RLHFArgs
from swift_jax.rlhf.grpo_args import GRPOArgs


@dataclasses.dataclass
class RLHFArguments(TrainArguments):
    """TrainArguments plus the preference-training group (flat flags, as every group)."""

    rlhf: RLHFArgs = dataclasses.field(default_factory=RLHFArgs)

    def validate(self) -> "RLHFArguments":
        super().validate()
        self.rlhf.validate(self.tuner.tuner_type)
        return self


@dataclasses.dataclass
class GRPOArguments(TrainArguments):
    """TrainArguments plus GRPO's group, for `--rlhf_type grpo`."""

    rlhf_type: str = "grpo"
    """grpo (online RL: rollouts, rewards, advantages)."""
    grpo: GRPOArgs = dataclasses.field(default_factory=GRPOArgs)


def requested_rlhf_type(argv: Sequence[str]) -> str | None:
    """The `--rlhf_type` of a command line, or of its YAML (`--config X.yaml` or ms-swift 4's positional YAML)."""
    import yaml

    argv = list(argv)
    if "--rlhf_type" in argv and argv.index("--rlhf_type") + 1 < len(argv):
        return argv[argv.index("--rlhf_type") + 1]
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--rlhf_type=")]
    if given:
        return given[-1]
    path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else (argv[0] if argv and argv[0].endswith((".yaml", ".yml")) else None)
    if path and os.path.isfile(path):
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        return loaded.get("rlhf_type") if isinstance(loaded, dict) else None
    return None


def method_of(args: RLHFArguments):
    """The preference method `args` ask for."""
    from swift_jax.rlhf.methods import make_method

    return make_method(args.rlhf, model_path=args.model_args.model, dtype=args.model_args.dtype,
                       tuner_type=args.tuner.tuner_type, loss_chunk_size=args.training.loss_chunk_size)


def run_command(argv: Sequence[str] | None) -> dict[str, Any]:
    from swift_jax.cli import parse_config
    from swift_jax.train import train

    argv = list(sys.argv[1:] if argv is None else argv)
    if requested_rlhf_type(argv) == "grpo":
        from swift_jax.rlhf.grpo import GRPO

        grpo_args = parse_config(GRPOArguments, argv, aliases=ALIASES).validate()
        return train(grpo_args, GRPO(grpo_args.grpo, seed=grpo_args.training.seed, max_length=grpo_args.data.max_length))
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
