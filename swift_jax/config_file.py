"""Config files as ms-swift reads them: YAML or JSON, as the first argument (`swift sft x.yaml`) or `--config`.

    ENV:                         # exported before anything imports jax (swift-jax exports it, then runs the task)
      XLA_FLAGS: --xla_force_host_platform_device_count=8
    model: Qwen/Qwen2.5-0.5B-Instruct
    columns: {prompt_text: query}  # nested mappings: columns, lr_scheduler_kwargs, generation_config, ...

An `ENV` variable already set in the environment wins, with a warning (as ms-swift's `parse_yaml_args`).
`swift-jax` exports the block before it runs the task module; `python -m swift_jax.<task> x.yaml` exports it when
the arguments are parsed, after jax is imported (XLA_FLAGS, JAX_PLATFORMS then come too late).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_path_of(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The config file of a command line (its first argument, or `--config FILE`) and the rest of it."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0], argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config" and i + 1 >= len(argv):
                raise SystemExit("--config needs a YAML or JSON file path")
            path = arg.partition("=")[2] or argv[i + 1]
            return path, argv[:i] + argv[i + (1 if "=" in arg else 2):]
    return None, argv


def _load(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config {path}: no such file")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                loaded = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
        else:
            import yaml

            loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values")
    return loaded


def export_env(path: str) -> None:
    """Export the file's `ENV` mapping into os.environ (variables already set win, with a warning line), once:
    SWIFT_CONFIG_FILE names the file whose ENV was exported (ms-swift sets it too)."""
    if os.environ.get("SWIFT_CONFIG_FILE") == os.path.abspath(path):
        return
    os.environ["SWIFT_CONFIG_FILE"] = os.path.abspath(path)
    env = _load(path).get("ENV") or {}
    if not isinstance(env, dict):
        raise ValueError(f"{path}: ENV must be a mapping of environment variables to values, got {env!r}")
    for key, value in env.items():
        value = str(value)
        if key not in os.environ:
            os.environ[key] = value
        elif os.environ[key] != value:
            print(f"{path}: {key} is already set in the environment; using {os.environ[key]!r} instead of {value!r}",
                  file=sys.stderr)


def read_config(path: str) -> dict:
    """The file's arguments (name -> value), its ENV exported first."""
    export_env(path)
    return {k: v for k, v in _load(path).items() if k != "ENV"}
