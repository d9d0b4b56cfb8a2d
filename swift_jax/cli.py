"""Command-line parsing shared by every task: `--config X.yaml` plus flag overrides, through tyro.

Arguments are typed dataclasses, possibly nested (model / data / training groups); flags and YAML keys
are flat, as in ms-swift (`--lora_rank 8`, not `--tuner.lora_rank`). The YAML supplies values, flags
override them; an unknown YAML key is an error naming the file and the key; ms-swift's lower-case
booleans (`--packing true`) and its 3.x names (`--train_type`) are accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from typing import Any, Sequence, TypeVar, get_type_hints

import tyro
import yaml

T = TypeVar("T")


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
    bool_flags = {f"--{name}" for name, (_, f) in owners.items() if f.type in (bool, bool | None)}
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1].replace("-", "_").replace("__", "--", 1) in bool_flags and out[i].lower() in ("true", "false"):
            out[i] = out[i].capitalize()
    return out


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
