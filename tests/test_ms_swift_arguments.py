"""ms-swift's commands as written: every ms-swift 4.6 argument of sft/pt/rlhf/infer/deploy/eval/export/merge-lora
parses (tests/golden/ms_swift_arguments.json, recorded from its dataclasses by scripts/record_ms_swift_arguments.py),
as a field, a mapped name or one warning line; config files (YAML or JSON, ENV, nested mappings) as ms-swift reads
them; --ignore_args_error, --external_plugins, --load_args/--load_data_args; the README's generated table."""

import json
import os
import subprocess
import sys

import pytest

from swift_jax.cli import field_names, parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.deploy import DeployArgs
from swift_jax.eval import EvalArgs
from swift_jax.export import ExportArgs
from swift_jax.infer import InferArgs
from swift_jax.ms_swift_args import COMMANDS, aliases_for, command_classes, notes_for
from swift_jax.pt import PT_DEFAULTS
from swift_jax.rlhf.__main__ import GRPOArguments, RLHFArguments, parse_arguments

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "ms_swift_arguments.json")))["commands"]


def _sample(spec: dict) -> list[str]:
    """A value of ms-swift's type for the flag: its first choice, its default, or one of its type."""
    if spec.get("choices"):
        return [str(next(c for c in spec["choices"] if c is not None))]
    default, tp = spec["default"], spec["type"].lower()
    if isinstance(default, bool):
        return [str(default).lower()]
    if isinstance(default, (int, float, str)) and default != "":
        return [str(default)]
    if isinstance(default, list) and default:
        return [str(v) for v in default]
    if "dict" in tp:
        return ['{"a": "b"}']
    for kind, value in (("list[float]", "2"), ("list[int]", "1"), ("list", "a"), ("bool", "true"), ("int", "1"),
                        ("float", "2")):
        if kind in tp:
            return [value]
    return ["x"]


SAMPLES = {"external_plugins": [], "custom_register_path": [], "reward_weights": ["1", "1"], "eval_strategy": ["steps"]}
"""Values that must agree with other flags' (one weight per reward function and model), name files to import, or
that ms-swift's type does not spell out (eval_strategy: a str that transformers reads as an IntervalStrategy)."""


def _argv(command: str) -> list[str]:
    return [tok for name, spec in GOLDEN[command]["arguments"].items()
            for tok in (f"--{name}", *SAMPLES.get(name, _sample(spec)))]


def _parse(command: str, argv: list[str]):
    """Parse `argv` as the command's main does (parse only: no model is loaded)."""
    if command == "rlhf":
        return parse_arguments(argv)
    cls = {"sft": TrainArguments, "pt": TrainArguments, "infer": InferArgs, "deploy": DeployArgs, "eval": EvalArgs,
           "export": ExportArgs, "merge-lora": ExportArgs}[command]
    preset = ["--merge_lora", "true"] if command == "merge-lora" else []
    return parse_config(cls, preset + argv, aliases=ALIASES, command=command, defaults=PT_DEFAULTS if command == "pt" else None)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_ms_swift_argument_parses(command, capsys):
    """All of the command's ms-swift arguments at once, each with a value of ms-swift's type: the parse succeeds
    (no "Unrecognized options"), and each that is no field here is named on exactly one warning line."""
    argv = _argv(command)
    if command == "rlhf":  # each method's own loss_type values
        runs = [argv + ["--rlhf_type", "dpo", "--loss_type", "sigmoid"], argv + ["--rlhf_type", "grpo", "--loss_type", "grpo"]]
    else:
        runs = [argv]
    for run in runs:
        args = _parse(command, run)
        lines = capsys.readouterr().err.splitlines()
        fields = field_names(type(args))
        for name in GOLDEN[command]["arguments"]:
            named = [line for line in lines if f"--{name} " in line or f"--{name}:" in line]
            if name in fields or name in ALIASES or name in aliases_for(command) or name == "ignore_args_error":
                continue
            if name == "external_plugins":  # imported (here: none)
                continue
            assert len([line for line in named if line.startswith((f"ignoring --{name}:", f"--{name} ", f"--{name}:"))]) == 1, (name, named)


def test_the_golden_list_is_ms_swift_46_and_complete():
    counts = {cmd: len(GOLDEN[cmd]["arguments"]) for cmd in ("sft", "rlhf", "infer", "export")}
    assert counts == {"sft": 333, "rlhf": 481, "infer": 153, "export": 127}  # the counts the issue read
    for command in COMMANDS:
        fields = set().union(*(field_names(c) for c in command_classes(command)))
        accepted = fields | set(ALIASES) | set(aliases_for(command)) | set(notes_for(command)) | {"ignore_args_error", "external_plugins"}
        assert set(GOLDEN[command]["arguments"]) <= accepted, sorted(set(GOLDEN[command]["arguments"]) - accepted)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_name_is_both_a_field_and_a_note(command):
    """A note is for an argument that is no field of the command; once a change makes it a field, delete the note.
    Every note names an ms-swift argument of the command."""
    fields = set().union(*(field_names(c) for c in command_classes(command)))
    notes = set(notes_for(command))
    assert not fields & notes, f"{command}: both a field and a note (delete the note): {sorted(fields & notes)}"
    assert not fields & set(aliases_for(command))
    assert notes <= set(GOLDEN[command]["arguments"]), sorted(notes - set(GOLDEN[command]["arguments"]))


def test_a_flag_that_would_change_the_result_says_so(capsys):
    parse_config(TrainArguments, ["--model", "m", "--use_galore", "true", "--deepspeed", "zero3", "--model_revision", "v1",
                                  "--lisa_activated_layers", "0"], command="sft")
    err = capsys.readouterr().err.splitlines()
    assert "--use_galore true: not implemented in swift-jax, so the result differs from ms-swift's: GaLore" in err[0]
    assert err[1].startswith("ignoring --deepspeed: sharding comes from the mesh: --fsdp_size")
    assert err[2].startswith("ignoring --model_revision: model hub ids are always Hugging Face ids")
    assert err[3].startswith("ignoring --lisa_activated_layers: LISA")  # off: no difference
    parse_config(TrainArguments, ["--model", "m", "--use_galore"], command="sft")  # bare: true
    assert capsys.readouterr().err.startswith("--use_galore: not implemented in swift-jax, so the result differs")
    args = parse_config(TrainArguments, ["--model", "m", "--max_new_tokens", "12"], command="sft")
    assert args.training.predict_max_new_tokens == 12  # sft's generation length is its prediction's


def test_rlhf_accepts_the_other_methods_flags(capsys):
    dpo = parse_arguments(["--model", "m", "--rlhf_type", "dpo", "--num_generations", "4", "--beta", "0.2"])
    assert isinstance(dpo, RLHFArguments) and dpo.rlhf.beta == 0.2
    assert "ignoring --num_generations: applies to --rlhf_type grpo only" in capsys.readouterr().err
    grpo = parse_arguments(["--model", "m", "--rlhf_type", "grpo", "--rpo_alpha", "0.5"])
    assert isinstance(grpo, GRPOArguments)
    assert "ignoring --rpo_alpha: applies to the preference methods" in capsys.readouterr().err


def test_columns_as_json_and_yaml_and_json_config(tmp_path, capsys):
    """ms-swift's `--columns '{"q": "query"}'`, a YAML mapping, and a JSON config file as the first argument."""
    args = parse_config(InferArgs, ["--columns", '{"q": "query", "a": "response"}'], command="infer")
    assert args.columns == {"q": "query", "a": "response"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ncolumns:\n  q: query\ngeneration_config: {max_new_tokens: 8}\n"
                      "lr_scheduler_kwargs: {num_cycles: 0.5}\n")  # nested mappings, whether fields or notes
    train = parse_config(TrainArguments, [str(recipe), "--lora_rank", "4"], command="sft")
    assert train.data.columns == {"q": "query"} and train.tuner.lora_rank == 4
    assert f"{recipe}: ignoring --generation_config: evaluation during training" in capsys.readouterr().err
    config = tmp_path / "r.json"
    config.write_text(json.dumps({"model": "m", "columns": {"q": "query"}, "lora_rank": 16, "deepspeed": "zero2"}))
    train = parse_config(TrainArguments, [str(config)], command="sft")
    assert (train.model_args.model, train.data.columns, train.tuner.lora_rank) == ("m", {"q": "query"}, 16)
    assert f"{config}: ignoring --deepspeed: sharding comes from the mesh" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--columns: expected a JSON object"):
        parse_config(InferArgs, ["--columns", "{q: query"], command="infer")


def test_ignore_args_error_and_external_plugins(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(InferArgs, ["--model", "m", "--not_an_argument", "1"], command="infer")
    args = parse_config(InferArgs, ["--model", "m", "--not_an_argument", "1", "--ignore_args_error", "true"], command="infer")
    assert args.model == "m" and "ignoring unknown --not_an_argument (--ignore_args_error true)" in capsys.readouterr().err
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import os\nos.environ['SWIFT_JAX_TEST_PLUGIN'] = 'imported'\n")
    parse_config(TrainArguments, ["--model", "m", "--external_plugins", str(plugin)], command="sft")
    assert os.environ.pop("SWIFT_JAX_TEST_PLUGIN") == "imported"


def test_load_args_and_load_data_args(tmp_path):
    """infer reads the checkpoint's args.json (template, and with --load_data_args its val_dataset and columns);
    --load_args false reads nothing."""
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "args.json").write_text(json.dumps(
        {"template": "qwen2_5", "system": "Be brief.", "val_dataset": ["held_out.jsonl"], "columns": {"q": "query"}}))
    args = parse_config(InferArgs, ["--adapters", str(ckpt), "--load_data_args", "true"], command="infer")
    args.load_data()
    assert args.val_dataset == ["held_out.jsonl"] and args.columns == {"q": "query"}
    assert args.trained_template_fields(*args.trained_run())["template"] == "qwen2_5"
    plain = parse_config(InferArgs, ["--adapters", str(ckpt), "--load_args", "false", "--val_dataset", "v.jsonl"], command="infer")
    plain.load_data()
    assert plain.val_dataset == ["v.jsonl"] and plain.trained_template_fields(*plain.trained_run())["template"] is None
    (tmp_path / "run" / "args.json").write_text(json.dumps({"dataset": ["d.jsonl"], "split_dataset_ratio": 0.1}))
    split = parse_config(InferArgs, ["--adapters", str(ckpt), "--load_data_args", "true"], command="infer")
    with pytest.raises(ValueError, match="held out --split_dataset_ratio 0.1 of --dataset.*pass the rows to answer with --val_dataset"):
        split.load_data()


def test_env_block_is_exported_before_jax(tmp_path):
    """A config file's ENV (here 3 fake CPU devices in XLA_FLAGS) takes effect: the plugin the run imports sees
    jax with 3 devices."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import jax\nprint('devices:', jax.device_count(), flush=True)\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"ENV:\n  XLA_FLAGS: --xla_force_host_platform_device_count=3\n  JAX_PLATFORMS: cpu\n"
                      f"external_plugins: [{plugin}]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", "from swift_jax.cli import main; main()", "sft", str(recipe)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "devices: 3" in out.stdout, out.stdout + out.stderr
    assert "--model is required" in out.stderr  # parsed, then refused for want of a model


def test_readme_argument_table_is_generated():
    """docs/arguments.md is what scripts/argument_table.py writes from the code (run it after changing arguments)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from argument_table import render
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "docs", "arguments.md")) as f:
        assert f.read() == render(), "docs/arguments.md is stale: run python scripts/argument_table.py"


def test_booleans_as_ms_swift_writes_them():
    """HfArgumentParser's booleans: any case, the bare flag for true, --no_X for false."""
    args = parse_config(TrainArguments, ["--model", "m", "--packing", "--streaming", "TRUE", "--dataset_shuffle", "false",
                                         "--no_add_version"], command="sft")
    assert (args.data.packing, args.data.streaming, args.data.dataset_shuffle, args.training.add_version) == (True, True, False, False)


def test_env_block_keeps_variables_already_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWIFT_JAX_TEST_SET", "mine")
    monkeypatch.delenv("SWIFT_JAX_TEST_NEW", raising=False)
    monkeypatch.delenv("SWIFT_CONFIG_FILE", raising=False)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"ENV": {"SWIFT_JAX_TEST_SET": "file", "SWIFT_JAX_TEST_NEW": 7}, "model": "m"}))
    assert parse_config(InferArgs, [str(recipe)], command="infer").model == "m"
    assert (os.environ["SWIFT_JAX_TEST_SET"], os.environ["SWIFT_JAX_TEST_NEW"]) == ("mine", "7")
    assert "SWIFT_JAX_TEST_SET is already set in the environment; using 'mine' instead of 'file'" in capsys.readouterr().err


MS_SWIFT_SFT_JSON = """{
    "model": "Qwen/Qwen2.5-7B-Instruct", "torch_dtype": "bfloat16", "tuner_type": "lora", "lora_rank": 8,
    "lora_alpha": 32, "target_modules": "all-linear",
    "dataset": ["AI-ModelScope/alpaca-gpt4-data-zh#500", "AI-ModelScope/alpaca-gpt4-data-en#500", "swift/self-cognition#500"],
    "split_dataset_ratio": 0.0, "max_length": 2048, "system": "You are a helpful assistant.", "model_author": "swift",
    "model_name": "swift-bot", "num_train_epochs": 1, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
    "learning_rate": 1e-4, "gradient_accumulation_steps": 8, "eval_steps": 50, "save_steps": 50, "save_total_limit": 2,
    "logging_steps": 5, "output_dir": "output", "warmup_ratio": 0.05, "dataloader_num_workers": 4, "dataset_num_proc": 4,
    "deepspeed": "zero2"
}"""
"""ms-swift's examples/yaml/deepspeed/sft.json (`swift sft examples/yaml/deepspeed/sft.json`), as written."""


def test_ms_swift_example_json_config_parses(tmp_path, capsys):
    config = tmp_path / "sft.json"
    config.write_text(MS_SWIFT_SFT_JSON)
    args = parse_config(TrainArguments, [str(config), "--lora_rank", "16"], aliases=ALIASES, command="sft").validate()
    assert (args.model_args.dtype, args.tuner.lora_rank, args.training.learning_rate, args.data.model_name) == (
        "bfloat16", 16, 1e-4, ["swift-bot"])
    err = capsys.readouterr().err
    assert f"{config}: ignoring --deepspeed: sharding comes from the mesh" in err and "--dataloader_num_workers" in err
