"""`python -m swift_jax.rlhf --rlhf_type dpo ...` (and `swift-jax rlhf`): ms-swift's `swift rlhf`.

Every SFT argument applies (model, LoRA/QLoRA/full, data, packing, mesh, checkpoints, resume) plus the group of
the requested `--rlhf_type`: RLHFArgs for preference training (dpo, simpo, orpo, cpo, kto, rm), GRPOArgs for
`grpo` (their flags share names with other meanings and defaults, e.g. `--beta` 0.1 vs 0.04, `--loss_type`, as
in ms-swift). `RLHF_METHODS` maps each type to its arguments class and method factory, so the command has no
branches and a new method is one `register_rlhf_type` call; the shared Trainer runs the method.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Sequence

from swift_jax.config import ALIASES, TrainArguments
from swift_jax.rlhf.preference.args import RLHF_TYPES, RLHFArgs
from swift_jax.rlhf.grpo.args import GRPOArgs


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
    path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else (argv[0] if argv and argv[0].endswith((".yaml", ".yml")) else None)
    if path and os.path.isfile(path):
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        return loaded.get("rlhf_type") if isinstance(loaded, dict) else None
    return None


def method_of(args: RLHFArguments):
    """The preference method `args` ask for."""
    from swift_jax.rlhf.preference.methods import make_method

    return make_method(args.rlhf, model_path=args.model_args.model, dtype=args.model_args.dtype,
                       tuner_type=args.tuner.tuner_type, loss_chunk_size=args.training.loss_chunk_size)


def grpo_method_of(args: GRPOArguments):
    """The GRPO method `args` ask for."""
    from swift_jax.rlhf.grpo import GRPO

    return GRPO(args.grpo, seed=args.training.seed, max_length=args.data.max_length)


class RLHFType(NamedTuple):
    """What `--rlhf_type T` runs: the arguments class its command line parses into, and the method built from
    the validated arguments."""

    arguments: type[TrainArguments]
    method: Callable[[Any], Any]


RLHF_METHODS: dict[str, RLHFType] = {
    **{t: RLHFType(RLHFArguments, method_of) for t in RLHF_TYPES},
    "grpo": RLHFType(GRPOArguments, grpo_method_of),
}
"""rlhf_type -> (arguments class, method factory)."""


def register_rlhf_type(rlhf_type: str, arguments: type[TrainArguments], method: Callable[[Any], Any]) -> None:
    """Make `--rlhf_type rlhf_type` parse into `arguments` and train `method(validated arguments)`."""
    RLHF_METHODS[rlhf_type] = RLHFType(arguments, method)


def run_command(argv: Sequence[str] | None) -> dict[str, Any]:
    from swift_jax.cli import parse_config
    from swift_jax.train import train

    argv = list(sys.argv[1:] if argv is None else argv)
    # an unknown type parses as preference arguments, whose validation names the choices
    entry = RLHF_METHODS.get(requested_rlhf_type(argv) or "dpo", RLHF_METHODS["dpo"])
    args = parse_config(entry.arguments, argv, aliases=ALIASES).validate()
    return train(args, entry.method(args))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command-line entry: errors a user can fix are printed as one line with exit status 1."""
    try:
        return run_command(argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
