"""The `swift-jax` command and the argument parsing every task shares: YAML plus flag overrides, through tyro.

    swift-jax sft --model Qwen/Qwen2.5-7B-Instruct --dataset data.jsonl --tuner_type lora
    swift-jax sft recipe.yaml --lora_rank 16          # ms-swift 4's positional YAML (or --config recipe.yaml)
    swift-jax pt | infer | deploy | eval | export | merge-lora | rlhf ...

Arguments are typed dataclasses composed of the shared groups of `swift_jax.arguments` (model, adapters,
template, generation; nested in training's, inherited by infer/eval/deploy/export); flags and YAML keys are flat, as in ms-swift (`--lora_rank 8`, not `--tuner.lora_rank`). The YAML supplies values, flags
override them; an unknown YAML key is an error naming the file and the key; ms-swift's lower-case
booleans (`--packing true`), its 3.x names (`--train_type`) and its JSON form of mappings (`--columns '{"a": "b"}'`)
are accepted. Every ms-swift 4.6 argument of a command is accepted: a field, a name mapped to one, or a flag
that is no field here, named on one line saying why (`swift_jax.ms_swift_args`); a config file's `ENV:` block is
exported before the task imports jax (`swift_jax.config_file`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from types import UnionType
from typing import Any, Sequence, TypeVar, Union, get_type_hints

import tyro

T = TypeVar("T")

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
        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


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
    from swift_jax.config_file import config_path_of, export_env

    config_path, _ = config_path_of(argv[1:])
    if config_path and os.path.exists(config_path):  # before the task module imports jax
        export_env(config_path)
    sys.argv = [f"swift-jax {argv[0]}", *preset, *argv[1:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ImportError as err:
        if err.name == module:
            raise SystemExit(f"swift-jax {argv[0]}: not available in this version ({module} is missing)") from err
        raise


def field_names(cls: type) -> set[str]:
    """The flat flag names of a (nested) argument dataclass."""
    return set(_field_owners(_resolve_types(cls)))


def _flag_groups(argv: list[str]) -> list[tuple[str | None, list[str]]]:
    """argv as (flag name or None for leading positionals, its value tokens); `--a=b` splits into `--a b`."""
    groups: list[tuple[str | None, list[str]]] = [(None, [])]
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            groups.append((name.replace("-", "_"), [value] if eq else []))
        else:
            groups[-1][1].append(arg)
    return groups if groups[0][1] else groups[1:]


def _kinds(owners, name: str | None) -> set:
    """The types a field's annotation allows ({bool, NoneType} for `bool | None`); empty for no field."""
    if name not in owners:
        return set()
    tp = owners[name][1].type
    return {typing.get_origin(t) or t for t in (typing.get_args(tp) if typing.get_origin(tp) in (Union, UnionType) else (tp,))}


def _ms_swift_values(groups, owners) -> list[tuple[str | None, list[str]]]:
    """Values as ms-swift's parser takes them, in tyro's form: booleans in any case (`--packing true`) or bare
    (`--packing`); a mapping as JSON (`--columns '{"q": "query"}'`, or a YAML mapping) -> `--columns q query`."""
    out = []
    for name, values in groups:
        kinds = _kinds(owners, name)
        if bool in kinds:
            values = [v.capitalize() if v.lower() in ("true", "false") else v for v in values] or ["True"]
        elif dict in kinds and len(values) == 1 and values[0].lstrip().startswith("{"):
            try:
                parsed = json.loads(values[0])
            except json.JSONDecodeError as err:
                raise ValueError(f"--{name}: expected a JSON object such as '{{\"a\": \"b\"}}', got {values[0]!r} ({err})") from None
            values = [tok for k, v in parsed.items() for tok in (str(k), v if isinstance(v, str) else json.dumps(v))]
        out.append((name, values))
    return out


def _accept(groups, owners, *, notes, elsewhere, ignore_errors: bool, source: str | None = None):
    """The flag groups tyro reads: fields kept; ms-swift arguments that are no field here dropped with one line
    each saying why (`swift_jax.ms_swift_args`); `--external_plugins` imported where no field takes it. An
    unknown flag is kept for tyro to refuse, or, with --ignore_args_error true, dropped with a line (ms-swift)."""
    kept, where = [], f"{source}: " if source else ""
    for name, values in groups:
        value = " ".join(values) if values else None
        if name is None or name in owners:
            kept.append((name, values))
        elif name.startswith("no_") and bool in _kinds(owners, name[3:]) and not values:  # HfArgumentParser's --no_X
            kept.append((name[3:], ["False"]))
        elif name == "ignore_args_error":
            continue
        elif name == "external_plugins":
            from swift_jax.rewards.plugins import load_plugins

            load_plugins(values)
        elif name in elsewhere:
            print(f"{where}ignoring --{name}: {elsewhere[name]}", file=sys.stderr)
        elif name in notes:
            print(where + notes[name].message(name, value), file=sys.stderr)
        elif ignore_errors:
            print(f"{where}ignoring unknown --{name} (--ignore_args_error true)", file=sys.stderr)
        elif source:
            hint = difflib.get_close_matches(name, owners, n=1)
            raise ValueError(f"{source}: unknown key {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + "; run with --help for the list of arguments")
        else:
            kept.append((name, values))
    return kept


def _flat(groups) -> list[str]:
    return [tok for name, values in groups for tok in ([f"--{name}"] if name else []) + values]


def parse_config(
    cls: type[T], argv: Sequence[str] | None = None, *, aliases: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None, command: str | None = None, elsewhere: dict[str, str] | None = None,
) -> T:
    """Parse a config file (`--config FILE` or ms-swift's positional YAML/JSON) and flags into the (nested)
    dataclass `cls`.

    `defaults` are a command's own defaults (e.g. `pt`'s `use_chat_template: false`); the file and the flags
    override them. `command` names the ms-swift command whose arguments are accepted with a note where they are
    no field (`swift_jax.ms_swift_args`); `elsewhere` notes flags that belong to another form of the command
    (rlhf's preference vs GRPO groups)."""
    from swift_jax.config_file import config_path_of, read_config
    from swift_jax.ms_swift_args import aliases_for, notes_for

    argv = list(sys.argv[1:] if argv is None else argv)
    aliases = {**(aliases or {}), **(aliases_for(command) if command else {})}
    notes = notes_for(command) if command else {}
    owners = _field_owners(_resolve_types(cls))
    config_path, argv = config_path_of(argv)
    rename = lambda groups: [(aliases.get(n, n), v) for n, v in groups]
    default_groups = _flag_groups([flag for key, value in (defaults or {}).items() for flag in _to_flags(key, value)])
    file_groups = rename(_flag_groups([f for k, v in read_config(config_path).items() for f in _to_flags(k, v)])) if config_path else []
    argv_groups = rename(_flag_groups(argv))
    ignore_errors = False
    for name, values in file_groups + argv_groups:
        if name == "ignore_args_error":
            ignore_errors = (values or ["true"])[-1].lower() == "true"
    kw = dict(notes=notes, elsewhere=elsewhere or {}, ignore_errors=ignore_errors)
    file_groups = _accept(file_groups, owners, source=config_path, **kw)
    argv_groups = _accept(argv_groups, owners, **kw)
    # Flags after the file's: the last occurrence wins, so the command line overrides the file.
    args = tyro.cli(
        cls,
        args=_flat(_ms_swift_values(default_groups + file_groups + argv_groups, owners)),
        config=(tyro.conf.OmitArgPrefixes, tyro.conf.FlagConversionOff),
    )
    # Which arguments the user set (file or flags), e.g. to refuse a flag that conflicts with --adapters.
    args.explicit_flags = frozenset(n for n, _ in file_groups + argv_groups if n in owners)
    return args
