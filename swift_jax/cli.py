"""The `swift-jax` command and the argument parsing every task shares: YAML plus flag overrides, through tyro.

    swift-jax sft --model Qwen/Qwen2.5-7B-Instruct --dataset data.jsonl --tuner_type lora
    swift-jax sft recipe.yaml --lora_rank 16          # ms-swift 4's positional YAML (or --config recipe.yaml)
    swift-jax pt | infer | deploy | eval | export | merge-lora | rlhf ...

Arguments are typed dataclasses composed of the shared groups of `swift_jax.arguments` (model, adapters,
template, generation; nested in training's, inherited by infer/eval/deploy/export); flags and YAML keys are flat, as in ms-swift (`--lora_rank 8`, not `--tuner.lora_rank`). The YAML supplies values, flags
override them; an unknown YAML key is an error naming the file and the key; ms-swift's lower-case
booleans (`--packing true`) and its 3.x names (`--train_type`) are accepted. ms-swift flags that mean nothing
here (`IGNORED_FLAGS`) are accepted with one line saying why; a flag that would change the result is never
ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from typing import Any, Sequence, TypeVar, get_type_hints

import tyro
import yaml

from swift_jax.engine.args import BACKEND_IGNORED

T = TypeVar("T")

# ms-swift flags with no effect on a swift_jax run, and why; accepted (flag or YAML key) with one logged line.
IGNORED_FLAGS = {
    "dataloader_num_workers": "grain reads and tokenises rows in background threads (--dataset_num_proc)",
    "dataloader_pin_memory": "host batches are handed to JAX directly; there is no CUDA pinned memory",
    "dataloader_persistent_workers": "the grain pipeline lives for the whole run",
    "dataloader_prefetch_factor": "batches are prefetched by grain",
    "deepspeed": "parameters and optimizer state are sharded by the mesh (--fsdp_size); there is no DeepSpeed",
    "ddp_backend": "JAX picks its collectives (NCCL on GPU, ICI on TPU, gloo on CPU)",
    "ddp_find_unused_parameters": "there is no DDP: gradients are taken of exactly the trainable parameters",
    "ddp_timeout": "there is no DDP process group",
    "check_model": "models are read from local folders or the hub without a ModelScope check",
    "use_hf": "hub ids are always Hugging Face ids",
    "hub_token": "set HF_TOKEN in the environment for private hub models",
    "use_liger_kernel": "the loss is a chunked cross-entropy already (--loss_chunk_size); Liger kernels are PyTorch",
    "lazy_tokenize": "rows are always tokenised lazily, in background threads",
    "model_type": "the architecture comes from the checkpoint's config.json model_type",
    "torch_empty_cache_steps": "there is no PyTorch cache allocator",
    **BACKEND_IGNORED,
}
COMMANDS = {
    "sft": ("swift_jax.train", []),
    "pt": ("swift_jax.pt", []),
    "rlhf": ("swift_jax.rlhf", []),
    "infer": ("swift_jax.infer", []),
    "deploy": ("swift_jax.deploy", []),
    "eval": ("swift_jax.eval", []),
    "export": ("swift_jax.export", []),
    "merge-lora": ("swift_jax.export", ["--merge_lora", "true"]),
}


def _field_owners(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[tuple[str, ...], dataclasses.Field]]:
    """Flat field name -> (path of nested dataclass attributes, field) for a (nested) dataclass."""
    owners = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, type) and dataclasses.is_dataclass(f.type)):
            owners.update(_field_owners(f.type, prefix + (f.name,)))
        else:
            owners[f.name] = (prefix, f)
    return owners


def _resolve_types(cls: type) -> type:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        if dataclasses.is_dataclass(f.type):
            _resolve_types(f.type)
    return cls


def _to_flags(key: str, value: Any) -> list[str]:
    """YAML `key: value` as the equivalent command-line flags, so tyro validates both alike."""
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *map(str, value)] if value else [f"--{key}"]
    if isinstance(value, dict):
        import json

        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


def _normalise_bools(argv: list[str], owners) -> list[str]:
    bool_flags = {f"--{name}" for name, (_, f) in owners.items() if f.type in (bool, bool | None, bool | str)}
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1].replace("-", "_").replace("__", "--", 1) in bool_flags and out[i].lower() in ("true", "false"):
            out[i] = out[i].capitalize()
    return out


def _log_ignored(flag: str, where: str = "") -> None:
    print(f"{where}ignoring --{flag}: {IGNORED_FLAGS[flag]}", file=sys.stderr)


def _drop_ignored(argv: list[str], owners) -> list[str]:
    """argv without the ms-swift flags in IGNORED_FLAGS (and their values), each named once on stderr."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            skipping = name in IGNORED_FLAGS and name not in owners
            if skipping:
                _log_ignored(name)
                continue
        elif skipping:
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """`swift-jax SUBCOMMAND [args]`: ms-swift's command names, each running `python -m swift_jax.<task>`."""
    import runpy

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        listing = ", ".join(COMMANDS)
        print(f"usage: swift-jax {{{listing}}} [--config X.yaml | X.yaml] [--flag value ...]", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"swift-jax: unknown command {argv[0]!r}; expected one of {listing}", file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module, preset = COMMANDS[argv[0]]
    sys.argv = [f"swift-jax {argv[0]}", *preset, *argv[1:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ImportError as err:
        if err.name == module:
            raise SystemExit(f"swift-jax {argv[0]}: not available in this version ({module} is missing)") from err
        raise


def parse_config(
    cls: type[T], argv: Sequence[str] | None = None, *, aliases: dict[str, str] | None = None, defaults: dict[str, Any] | None = None
) -> T:
    """Parse `--config FILE.yaml` and flags into the (nested) dataclass `cls`.

    `defaults` are a command's own defaults (e.g. `pt`'s `use_chat_template: false`); the YAML and the flags
    override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    aliases = aliases or {}
    _resolve_types(cls)
    owners = _field_owners(cls)
    config_path = None
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):  # ms-swift 4: `swift sft x.yaml`
        argv = ["--config", *argv]
    argv = _drop_ignored(argv, owners)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file path")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    default_flags = [flag for key, value in (defaults or {}).items() for flag in _to_flags(key, value)]
    yaml_flags: list[str] = []
    if config_path is not None:
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"--config {config_path}: no such file")
        with open(config_path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: expected a mapping of argument names to values")
        for key, value in loaded.items():
            key = aliases.get(key, key)
            if key in IGNORED_FLAGS and key not in owners:
                _log_ignored(key, f"{config_path}: ")
                continue
            if key not in owners:
                hint = difflib.get_close_matches(key, owners, n=1)
                raise ValueError(
                    f"{config_path}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + "; run with --help for the list of arguments"
                )
            yaml_flags += _to_flags(key, value)
    argv = [("--" + aliases[a[2:]]) if a.startswith("--") and a[2:] in aliases else a for a in argv]
    # Flags after the YAML's: the last occurrence wins, so the command line overrides the file.
    args = tyro.cli(
        cls,
        args=_normalise_bools(default_flags + yaml_flags + argv, owners),
        config=(tyro.conf.OmitArgPrefixes, tyro.conf.FlagConversionOff),
    )
    # Which arguments the user set (YAML or flags), e.g. to refuse a flag that conflicts with --adapters.
    args.explicit_flags = frozenset(a[2:].replace("-", "_") for a in yaml_flags + argv if a.startswith("--") and a[2:].replace("-", "_") in owners)
    return args
