"""ms-swift example scripts -> the `swift-jax` commands they run, with tiny local models, data and sizes.

Two steps, both without running any model:
- `record(script)`: runs the .sh file under bash with every launcher (`swift`, `torchrun`, `python`, `curl`,
  ...) replaced by a stub that records its argv and environment. Bash itself handles line continuations,
  `VAR=1 swift ...` prefixes, `export`, shell variables and `$(expr ...)`, so nothing is re-parsed by hand.
- `classify(call)` / `rewrite(command, assets, cwd)`: names the swift subcommand (`swift sft`, `python -m
  swift.cli.sft`, `torchrun ... swift/cli/sft.py`), says why a call is out of scope, and swaps only the
  model flags, the datasets and the sizes; every other flag passes through as written.

Used by scripts/ms_swift_examples.py (which runs the commands) and tests/test_ms_swift_examples.py.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable

# Launchers a script may call; each becomes a recording stub on PATH while the script runs.
STUBBED = ("swift", "megatron", "torchrun", "accelerate", "deepspeed", "python", "python3", "vllm", "curl", "pip",
           "pip3", "wget", "git", "trl", "lmdeploy", "sleep", "nohup", "huggingface-cli", "modelscope", "bash",
           "nvidia-smi", "ray")
# Environment a launcher inherits that does not matter here (device selection, shell bookkeeping).
DROPPED_ENV = {"CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "PWD", "OLDPWD", "SHLVL", "_", "PATH",
               "EXAMPLES_RECORD"}
# swift subcommands with nothing to run here, and why (the table keeps them with the reason).
OUT_OF_SCOPE_SUB = {
    "rollout": "`swift rollout` is a vLLM rollout server for GRPO (vLLM is PyTorch/CUDA)",
    "app": "`swift app` is a Gradio web app",
    "web-ui": "`swift web-ui` is a Gradio web app",
}
TRAINING = {"sft", "pt", "rlhf"}
# Flags naming a model folder (or an adapter folder) that the tiny local models replace.
MODEL_FLAGS = {"model", "ref_model", "reward_model", "teacher_model", "value_model", "prm_model"}
ADAPTER_FLAGS = {"adapters", "ckpt_dir", "ref_adapters", "teacher_adapters", "resume_from_checkpoint"}
DATASET_FLAGS = {"dataset", "val_dataset"}
# Size flags and the largest value kept (smaller values pass through unchanged).
SIZE_CAPS = {
    "max_steps": 2, "num_train_epochs": 1, "max_length": 256, "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 2, "save_steps": 2, "eval_steps": 2,
    "max_new_tokens": 16, "max_completion_length": 16, "num_generations": 2, "generation_batch_size": 4,
    "max_batch_size": 2, "eval_limit": 4, "num_return_sequences": 2, "sampler_num_samples": 2,
    "max_model_len": 512, "vllm_max_model_len": 512,
}
COUNT_CAP = 32  # `name#N` keeps its suffix, at most this many rows (the tiny files hold 64)
MOE = re.compile(r"A\d+B|MoE|Mixtral|GLM-4\.5|Llama-4|Qwen3-Next|57B-A14B|DeepSeek-V[23]|deepseek-v[23]", re.I)
VL = re.compile(r"VL|Omni|InternVL|llava|glm-4v|MiniCPM-V|Ovis|Phi-4-multimodal|gme-|Emu3|Audio|jina-reranker-m0"
                r"|Qwen3\.5|Kimi-VL|gemma-3-\d+b|Llama-3\.2-\d+B-Vision", re.I)
PLACEHOLDER = re.compile(r"x{2,}")  # ms-swift's `output/vx-xxx/checkpoint-xxx`
PLACEHOLDER_ARG = re.compile(r"<(\w+)>")  # `--port <node1_port>`: a value to fill in, not a redirection


@dataclasses.dataclass
class Call:
    """One launcher call a script made: argv (argv[0] is the launcher) and the environment it set."""

    argv: list[str]
    env: dict[str, str]


@dataclasses.dataclass
class Command:
    """A classified call: `sub` is the swift subcommand (None when out of scope, with `reason`)."""

    call: Call
    sub: str | None
    args: list[str]
    reason: str = ""
    processes: int = 1


def record(script: str, cwd: str | None = None, timeout: float = 30) -> list[Call]:
    """The launcher calls `script` makes, in order, when bash runs it with every launcher stubbed."""
    with tempfile.TemporaryDirectory() as tmp:
        stubs, log = os.path.join(tmp, "bin"), os.path.join(tmp, "calls.jsonl")
        os.makedirs(stubs)
        body = (f"#!{sys.executable}\nimport json, os, sys\nwith open(os.environ['EXAMPLES_RECORD'], 'a') as f:\n"
                "    f.write(json.dumps({'argv': [os.path.basename(sys.argv[0])] + sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n")
        for name in STUBBED:
            path = os.path.join(stubs, name)
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, 0o755)
        base = {"PATH": stubs + os.pathsep + "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8", "EXAMPLES_RECORD": log}
        text = PLACEHOLDER_ARG.sub(r"\1", open(script).read())  # `--port <node1_port>` would be a redirection
        subprocess.run(["/bin/bash", "--noprofile", "--norc", "-s"], input=text.encode(), cwd=cwd or tmp, env=base,
                       capture_output=True, timeout=timeout)
        if not os.path.exists(log):
            return []
        calls = []
        for line in open(log):
            rec = json.loads(line)
            env = {k: v for k, v in rec["env"].items() if k not in DROPPED_ENV and base.get(k) != v}
            calls.append(Call(rec["argv"], env))
        return calls


def _swift_entry(argv: list[str]) -> tuple[str | None, list[str]]:
    """(subcommand, its args) of a `python -m swift.cli.X` / `torchrun ... swift/cli/X.py` call, else (None, [])."""
    for i, arg in enumerate(argv):
        m = re.fullmatch(r"(?:.*/)?swift/cli/(\w+)\.py", arg) or (
            re.fullmatch(r"swift\.cli\.(\w+)", arg) if i > 0 and argv[i - 1] == "-m" else None)
        if m:
            return m.group(1).replace("_", "-"), argv[i + 1:]
    return None, []


def classify(call: Call) -> Command:
    """Which swift subcommand `call` is, or why it is out of scope."""
    argv = list(call.argv)
    while argv and argv[0] in ("nohup", "bash") and len(argv) > 1 and argv[1] in STUBBED:
        argv = argv[1:]
    prog = argv[0] if argv else ""
    nproc = int(call.env.get("NPROC_PER_NODE", "1") or 1)
    if prog == "swift":
        sub = argv[1] if len(argv) > 1 else ""
        if sub in OUT_OF_SCOPE_SUB:
            return Command(call, None, argv[2:], OUT_OF_SCOPE_SUB[sub])
        return Command(call, sub, argv[2:], processes=nproc)
    if prog == "megatron":
        return Command(call, None, argv[1:], "`megatron ...` is Megatron-LM training (out of the issue's scope)")
    if prog in ("torchrun", "accelerate", "deepspeed", "python", "python3"):
        sub, args = _swift_entry(argv[1:])
        if sub is not None:
            if sub.startswith("megatron") or "megatron" in " ".join(argv):
                return Command(call, None, args, "Megatron-LM training (out of the issue's scope)")
            flags = " ".join(argv)
            m = re.search(r"--nproc[_-]per[_-]node[= ](\d+)", flags)
            return Command(call, sub, args, processes=int(m.group(1)) if m else nproc)
    return Command(call, None, argv[1:], f"`{prog}` is not a swift command")


@dataclasses.dataclass
class Assets:
    """Local stand-ins: tiny model folders by kind, a trained adapter by kind, data files by shape."""

    models: dict[str, str]  # "text" | "vl" | "moe" -> folder
    data: dict[str, str]  # shape ("sft", "pairs", "kto", "grpo", "vl_sft", "vl_pairs", ...) -> jsonl file
    adapter: Callable[[str], str] | None = None  # kind -> a trained LoRA checkpoint folder of that tiny model


def model_kind(name: str) -> str:
    """"vl", "moe" or "text": which tiny model stands in for the hub model `name`."""
    if VL.search(name):
        return "vl"
    return "moe" if MOE.search(name) else "text"


def _split_flags(args: list[str]) -> list[tuple[str | None, list[str]]]:
    """[(flag name or None for leading positionals, values)] in order; `--a=b` is `--a b`."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            out.append((name, [value] if eq else []))
        else:
            out[-1][1].append(arg)
    return out if out[0][1] else out[1:]


def _join_flags(flags: list[tuple[str | None, list[str]]]) -> list[str]:
    return [a for name, values in flags for a in ([f"--{name}"] if name else []) + values]


def _rlhf_shape(flags: dict[str, list[str]]) -> str:
    rlhf_type = (flags.get("rlhf_type") or ["dpo"])[0]
    if rlhf_type == "kto":
        return "kto"
    if rlhf_type in ("grpo", "ppo", "dapo", "gspo", "rloo", "reinforce_plus_plus", "gkd", "opsd"):
        return "grpo" if rlhf_type != "gkd" else "sft"
    return "pairs"


def data_shape(sub: str, flags: dict[str, list[str]], kind: str) -> str:
    """The tiny data file a command's datasets become: sft messages, preference pairs, KTO, GRPO prompts."""
    shape = _rlhf_shape(flags) if sub == "rlhf" else "sft"
    return f"vl_{shape}" if kind == "vl" else shape


def latest_output(cwd: str, value: str, merged: bool) -> str | None:
    """The newest `checkpoint-*` (or `*-merged`) folder an earlier command of the same script wrote under the
    folder in front of ms-swift's `vx-xxx/checkpoint-xxx` placeholder (`output/...` -> `cwd/output/**`)."""
    head = value.split("vx-xxx")[0].split("xxx")[0].rstrip("/") or "."
    pattern = os.path.join(cwd, head, "**", "checkpoint-*" + ("-merged" if merged else ""))
    found = [p for p in glob.glob(pattern, recursive=True) if os.path.isdir(p) and (merged or not p.endswith("-merged"))]
    return max(found, key=os.path.getmtime) if found else None


def _model_value(value: str, assets: Assets, cwd: str) -> str:
    if PLACEHOLDER.search(value) or value.startswith("output"):
        found = latest_output(cwd, value, merged=value.endswith("-merged"))
        if found:
            return found
    if os.path.exists(os.path.join(cwd, value)):
        return value
    return assets.models[model_kind(value)]


def _adapter_value(value: str, assets: Assets, cwd: str, kind: str) -> str:
    name, eq, path = value.rpartition("=")
    found = latest_output(cwd, path, merged=path.endswith("-merged")) if PLACEHOLDER.search(path) or path.startswith("output") else None
    if found is None and not os.path.exists(os.path.join(cwd, path)):
        found = assets.adapter(kind)
    return f"{name}{eq}{found or path}"


def _dataset_value(value: str, shape: str, assets: Assets, cwd: str) -> str:
    name, hash_, count = value.partition("#")
    if name.startswith("swift/self-cognition"):  # bundled offline (README "Training")
        return value
    if not os.path.isfile(os.path.join(cwd, name.split(":")[0])):
        name = assets.data[shape]
    if hash_ and count.isdigit():
        count = str(min(int(count), COUNT_CAP))
    return name + hash_ + count


def rewrite(command: Command, assets: Assets, cwd: str) -> list[str]:
    """`command`'s arguments for `swift-jax <sub>`: tiny models, data and sizes swapped in, the rest as written."""
    flags = _split_flags(command.args)
    by_name = {name: values for name, values in flags if name}
    model = (by_name.get("model") or [""])[0]
    kind = model_kind(model) if model and not os.path.exists(os.path.join(cwd, model)) else "text"
    shape = data_shape(command.sub, by_name, kind)
    out = []
    for name, values in flags:
        key = (name or "").replace("-", "_")
        if key in ("", "config"):
            values = [_rewrite_yaml(v, command, assets, cwd) for v in values]
        elif key in MODEL_FLAGS:
            values = [_model_value(v, assets, cwd) for v in values]
        elif key in ADAPTER_FLAGS:
            values = [_adapter_value(v, assets, cwd, kind) for v in values]
        elif key in DATASET_FLAGS:
            values = [_dataset_value(v, shape, assets, cwd) for v in values]
        elif key in SIZE_CAPS and len(values) == 1 and re.fullmatch(r"\d+", values[0]):
            values = [str(min(int(values[0]), SIZE_CAPS[key]))]
        out.append((name, values))
    if command.sub in TRAINING and "max_steps" not in by_name:
        out.append(("max_steps", [str(SIZE_CAPS["max_steps"])]))
    if command.sub == "rlhf" and shape.endswith("grpo"):
        out = _whole_groups(out)
    return _join_flags(out)


def _rewrite_yaml(value: str, command: Command, assets: Assets, cwd: str) -> str:
    """A YAML config's copy in `cwd` with the same swaps as the flags (ms-swift 4's `swift sft x.yaml`)."""
    import yaml

    path = os.path.join(cwd, value)
    if not value.endswith((".yaml", ".yml")) or not os.path.isfile(path):
        return value
    config = yaml.safe_load(open(path)) or {}
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    args = [a for k, v in flat.items() for a in [f"--{k}", *map(str, v if isinstance(v, list) else [v])]]
    swapped = dict(_split_flags(rewrite(Command(command.call, command.sub, args), assets, cwd)))
    for k, v in swapped.items():
        config[k] = v if isinstance(flat.get(k), list) or len(v) != 1 else yaml.safe_load(v[0])
    out = os.path.join(cwd, "rewritten-" + os.path.basename(value))
    with open(out, "w") as f:
        yaml.safe_dump(config, f, allow_unicode=True, sort_keys=False)
    return out


def _whole_groups(flags: list[tuple[str | None, list[str]]]) -> list[tuple[str | None, list[str]]]:
    """GRPO's completions per step (batch x accumulation, one process here) in whole groups of
    --num_generations (ms-swift's defaults 1, 1, 8): the example's processes made up the rest."""
    def value(name, default):
        got = [v for n, v in flags if n == name and len(v) == 1 and v[0].isdigit()]
        return int(got[-1][0]) if got else default

    g = value("num_generations", 8)
    batch, accum = value("per_device_train_batch_size", 1), value("gradient_accumulation_steps", 1)
    out = [(n, v) for n, v in flags if n != "per_device_train_batch_size" or not (batch * accum) % g]
    if (batch * accum) % g:
        out.append(("per_device_train_batch_size", [str(g)]))
    return [(n, [str(g)] if n == "generation_batch_size" and value(n, g) % g else v) for n, v in out]
