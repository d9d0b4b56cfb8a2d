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
    """The `--rlhf_type` of a command line, or of its config file (`--config X.yaml` or ms-swift's positional
    YAML/JSON)."""
    from swift_jax.config_file import config_path_of, read_config

    path, argv = config_path_of(argv)
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--rlhf_type"]
    given += [a.partition("=")[2] for a in argv if a.startswith("--rlhf_type=")]
    if given:  # the last one wins, as for every flag
        return given[-1]
    if path and os.path.isfile(path):
        return read_config(path).get("rlhf_type")
    return None


def method_of(args: RLHFArguments):
    """The preference method `args` ask for."""
    from swift_jax.rlhf.methods import make_method

    return make_method(args.rlhf, model_path=args.model_args.model, dtype=args.model_args.dtype,
                       tuner_type=args.tuner.tuner_type, loss_chunk_size=args.training.loss_chunk_size)


def parse_arguments(argv: Sequence[str] | None) -> RLHFArguments | GRPOArguments:
    """The arguments of the requested --rlhf_type (unvalidated): the flags of the other group (GRPO's for a
    preference run, the preference losses' for GRPO) are ms-swift arguments too, named with a line as unused."""
    from swift_jax.cli import field_names, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    grpo = requested_rlhf_type(argv) == "grpo"
    cls, other = (GRPOArguments, RLHFArguments) if grpo else (RLHFArguments, GRPOArguments)
    why = "applies to --rlhf_type grpo only" if not grpo else "applies to the preference methods (dpo, kto, ...), not grpo"
    elsewhere = {name: why for name in field_names(other) - field_names(cls)}
    return parse_config(cls, argv, aliases=ALIASES, command="rlhf", elsewhere=elsewhere)


def run_command(argv: Sequence[str] | None) -> dict[str, Any]:
    from swift_jax.train import train

    args = parse_arguments(argv).validate()
    if isinstance(args, GRPOArguments):
        from swift_jax.rlhf.grpo import GRPO

        return train(args, GRPO(args.grpo, seed=args.training.seed, max_length=args.data.max_length))
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
