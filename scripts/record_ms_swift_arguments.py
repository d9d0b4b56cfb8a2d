"""Record the argument names of ms-swift's commands as a golden file for tests/test_ms_swift_arguments.py.

Run with ms-swift's python (never from tests; CI does not install ms-swift):

    /work/msswift-venv/bin/python scripts/record_ms_swift_arguments.py   # writes tests/golden/ms_swift_arguments.json

Each `swift <command>` parses one dataclass with transformers' HfArgumentParser (swift/cli/*.py and
swift/pipelines): every `init` field of that class (its inherited groups and, for the training commands,
Seq2SeqTrainingArguments') is a `--name` flag. For each command the file holds, per name, ms-swift's type,
default and choices (a Literal's values), so the test can hand every flag a value of ms-swift's type.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "ms_swift_arguments.json")

# swift-jax command -> ms-swift's argument class (swift/cli/<command>.py; merge-lora parses ExportArguments).
COMMAND_CLASSES = {
    "sft": "SftArguments",
    "pt": "PretrainArguments",
    "rlhf": "RLHFArguments",
    "infer": "InferArguments",
    "deploy": "DeployArguments",
    "eval": "EvalArguments",
    "export": "ExportArguments",
    "merge-lora": "ExportArguments",
}


def _type_name(tp) -> str:
    """A readable type string: Optional[int], List[str], Literal['a', 'b'], ..."""
    text = tp.__name__ if isinstance(tp, type) else str(tp)
    return text.replace("typing.", "")


def _choices(tp) -> list | None:
    """The allowed values of a Literal (or Optional[Literal]) or an Enum type, as HfArgumentParser offers them."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _choices(arg)
            if found is not None:
                return found
    return None


def _jsonable(value):
    if isinstance(value, enum.Enum):
        return value.value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def describe(cls) -> dict[str, dict]:
    """name -> {type, default, choices?} for every flag HfArgumentParser builds from `cls`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        entry = {"type": _type_name(tp), "default": _jsonable(default)}
        choices = _choices(tp)
        if choices is not None:
            entry["choices"] = [_jsonable(c) for c in choices]
        out[f.name] = entry
    return dict(sorted(out.items()))


def _dumps(golden: dict) -> str:
    """JSON with one line per argument, so a re-recording diffs line by line."""
    one = lambda value: json.dumps(value, ensure_ascii=False)
    blocks = []
    for cmd, entry in golden["commands"].items():
        rows = ",\n".join(f"    {one(name)}: {one(spec)}" for name, spec in entry["arguments"].items())
        blocks.append(f'  {one(cmd)}: {{"class": {one(entry["class"])}, "arguments": {{\n{rows}\n  }}}}')
    return '{"ms_swift_version": %s, "commands": {\n%s\n}}\n' % (one(golden["ms_swift_version"]), ",\n".join(blocks))


def main() -> None:
    import swift
    import swift.arguments as arguments

    commands = {cmd: {"class": name, "arguments": describe(getattr(arguments, name))} for cmd, name in COMMAND_CLASSES.items()}
    with open(OUT, "w") as f:
        f.write(_dumps({"ms_swift_version": swift.__version__, "commands": commands}))
    for cmd, entry in commands.items():
        print(f"{cmd:10s} {entry['class']:18s} {len(entry['arguments'])} arguments")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
