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


def _entry(argv: Sequence[str]) -> RLHFType:
    """The registry entry of a command line's --rlhf_type (an unknown type parses as preference arguments, whose
    validation names the choices)."""
    return RLHF_METHODS.get(requested_rlhf_type(argv) or "dpo", RLHF_METHODS["dpo"])


def _applies_to(arguments: type[TrainArguments]) -> str:
    """Where another arguments class's flags apply, for the line that names them as unused."""
    types = [t for t, e in RLHF_METHODS.items() if e.arguments is arguments]
    if arguments is RLHFArguments:
        return "applies to the preference methods (dpo, kto, ...), not " + ", ".join(t for t in RLHF_METHODS if t not in types)
    return f"applies to --rlhf_type {' / '.join(types)} only"


def parse_arguments(argv: Sequence[str] | None) -> TrainArguments:
    """The arguments of the requested --rlhf_type (unvalidated): the flags of the other types' groups (GRPO's
    for a preference run, the preference losses' for GRPO) are ms-swift arguments too, named with a line as
    unused."""
    from swift_jax.cli import field_names, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    cls = _entry(argv).arguments
    elsewhere = {}
    for other in {e.arguments for e in RLHF_METHODS.values()} - {cls}:
        elsewhere.update({name: _applies_to(other) for name in field_names(other) - field_names(cls)})
    return parse_config(cls, argv, aliases=ALIASES, command="rlhf", elsewhere=elsewhere)


def run_command(argv: Sequence[str] | None) -> dict[str, Any]:
    from swift_jax.train import train

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv).validate()
    return train(args, _entry(argv).method(args))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command-line entry: errors a user can fix are printed as one line with exit status 1."""
    try:
        return run_command(argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
