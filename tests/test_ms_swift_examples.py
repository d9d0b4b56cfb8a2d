"""The rewriter of scripts/ms_swift_examples.py on four of ms-swift's own example scripts (copied verbatim into
tests/fixtures/ms_swift_examples/ from ms-swift 3602360): bash line continuations, `VAR=1 swift ...` prefixes,
shell variables, torchrun's entry point, out-of-scope launchers, and the model / dataset / size swap with
ms-swift's `output/vx-xxx/checkpoint-xxx` placeholders mapped to an earlier command's output. No model runs."""

import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from examples_rewrite import Assets, classify, record, rewrite  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "ms_swift_examples")


def commands(name):
    return [classify(c) for c in record(os.path.join(FIXTURES, name))]


def flag(args, name):
    i = args.index(f"--{name}")
    values = []
    for a in args[i + 1:]:
        if a.startswith("--"):
            break
        values.append(a)
    return values


@pytest.fixture
def assets(tmp_path):
    built = []

    def adapter(kind):
        built.append(kind)
        return f"/tiny/adapter-{kind}"

    data = {s: f"/tiny/{s}.jsonl" for s in ("sft", "pairs", "kto", "grpo", "vl_sft", "vl_pairs", "vl_kto", "vl_grpo")}
    a = Assets(models={k: f"/tiny/{k}" for k in ("text", "vl", "moe")}, data=data, adapter=adapter)
    a.built = built
    return a


def test_continuations_and_env_prefix_make_one_command(assets, tmp_path):
    (c,) = commands("lora_sft.sh")
    assert c.sub == "sft" and c.processes == 1 and c.call.env == {}  # CUDA_VISIBLE_DEVICES is dropped
    assert flag(c.args, "dataset") == ["AI-ModelScope/alpaca-gpt4-data-zh#500", "AI-ModelScope/alpaca-gpt4-data-en#500",
                                       "swift/self-cognition#500"]
    assert flag(c.args, "system") == ["You are a helpful assistant."]
    args = rewrite(c, assets, str(tmp_path))
    assert flag(args, "model") == ["/tiny/text"]
    # hub datasets become the tiny sft file, `#N` kept (capped at 32); the bundled self-cognition set stays
    assert flag(args, "dataset") == ["/tiny/sft.jsonl#32", "/tiny/sft.jsonl#32", "swift/self-cognition#500"]
    assert flag(args, "max_length") == ["256"] and flag(args, "gradient_accumulation_steps") == ["2"]
    assert flag(args, "max_steps") == ["2"] and flag(args, "learning_rate") == ["1e-4"]
    untouched = {"tuner_type", "torch_dtype", "lora_rank", "lora_alpha", "target_modules", "logging_steps", "system",
                 "output_dir", "warmup_ratio", "dataset_num_proc", "dataloader_num_workers", "model_author", "model_name"}
    assert all(flag(args, f) == flag(c.args, f) for f in untouched)


def test_env_prefixes_and_chained_output_folder(assets, tmp_path):
    export, sft, infer = commands("cached_dataset_vlm.sh")
    assert [export.sub, sft.sub, infer.sub] == ["export", "sft", "infer"]
    assert sft.call.env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "MAX_PIXELS": "1003520",
                            "VIDEO_MAX_PIXELS": "50176", "FPS_MAX_FRAMES": "12", "NPROC_PER_NODE": "4",
                            "ENABLE_AUDIO_OUTPUT": "0"}
    assert sft.processes == 4
    # Qwen2.5-Omni is multimodal: the tiny Qwen2-VL model and image rows
    assert flag(rewrite(export, assets, str(tmp_path)), "dataset") == ["/tiny/vl_sft.jsonl#32"] * 3
    cwd = tmp_path
    os.makedirs(cwd / "qwen2_5_omni_cached_dataset" / "train")  # written by the export before it
    sft_args = rewrite(sft, assets, str(cwd))
    assert flag(sft_args, "cached_dataset") == ["./qwen2_5_omni_cached_dataset/train"]
    assert flag(sft_args, "per_device_train_batch_size") == ["1"] and flag(sft_args, "num_train_epochs") == ["1"]
    ckpt = cwd / "output" / "Qwen2.5-Omni-7B" / "v0-20260101-000000" / "checkpoint-2"
    os.makedirs(ckpt)  # what the sft wrote
    infer_args = rewrite(infer, assets, str(cwd))
    assert flag(infer_args, "model") == [str(ckpt)]
    assert flag(infer_args, "max_new_tokens") == ["16"] and flag(infer_args, "stream") == ["true"]
    assert "--max_steps" not in infer_args


def test_shell_variables_and_torchrun_entry_point(assets, tmp_path):
    (c,) = commands("torchrun_train_node1.sh")
    assert c.call.argv[0] == "torchrun" and c.sub == "sft" and c.processes == 4
    assert flag(c.args, "gradient_accumulation_steps") == ["4"]  # $(expr 32 / $nproc_per_node / $nnodes)
    assert flag(c.args, "deepspeed") == ["zero2"]
    args = rewrite(c, assets, str(tmp_path))
    assert flag(args, "dataset") == ["/tiny/sft.jsonl#32", "/tiny/sft.jsonl#32"]


def test_out_of_scope_launchers_and_placeholders(assets, tmp_path):
    cs = commands("grpo_server_multi_node.sh")
    assert [c.sub for c in cs] == [None, None, "rlhf", "rlhf"]
    assert "vLLM rollout server" in cs[0].reason
    rlhf = cs[2]
    assert flag(rlhf.args, "vllm_server_port") == ["node1_port", "node2_port"]  # `<node1_port>` is not a redirection
    assert rlhf.call.env["NNODES"] == "2" and rlhf.call.env["MASTER_ADDR"] == "127.0.0.1"
    args = rewrite(rlhf, assets, str(tmp_path))
    assert flag(args, "dataset") == ["/tiny/grpo.jsonl#32"] and flag(args, "num_generations") == ["2"]
    assert flag(args, "max_completion_length") == ["16"] and flag(args, "use_vllm") == ["true"]


def test_adapter_placeholder_without_earlier_training_uses_a_tiny_adapter(assets, tmp_path):
    from examples_rewrite import Call, Command

    c = Command(Call(["swift", "export", "--adapters", "output/vx-xxx/checkpoint-xxx", "--merge_lora", "true"], {}),
                "export", ["--adapters", "output/vx-xxx/checkpoint-xxx", "--merge_lora", "true"])
    assert rewrite(c, assets, str(tmp_path)) == ["--adapters", "/tiny/adapter-text", "--merge_lora", "true"]
    merged = tmp_path / "output" / "v0-x" / "checkpoint-2-merged"
    os.makedirs(merged)
    c = Command(c.call, "infer", ["--model", "output/vx-xxx/checkpoint-xxx-merged"])
    assert rewrite(c, assets, str(tmp_path)) == ["--model", str(merged)]


def test_the_table_names_refused_flags_and_the_error_line():
    from ms_swift_examples import _result, categories

    tyro = ("╭─ Unrecognized options ───────────────────────────────╮\n"
            "│ Unrecognized options: --infer_backend, vllm,         │\n"
            "│ --vllm_gpu_memory_utilization, 0.9                   │\n"
            "│ ──────────────────────────────────────────────────── │\n"
            "│ For full helptext, run swift_jax/infer.py --help     │\n"
            "╰──────────────────────────────────────────────────────╯\n")
    refused = _result(2, tyro)
    assert refused["status"] == "argument"
    assert refused["error"] == "unrecognized options: --infer_backend --vllm_gpu_memory_utilization"
    crash = _result(1, "Traceback (most recent call last):\n  File x\nValueError: bad shape 12 at /tmp/a/b.json\nbye\n")
    assert crash["status"] == "failed" and crash["error"] == "ValueError: bad shape 12 at /tmp/a/b.json"
    assert _result(2, "error: --output_dir is required\n")["status"] == "argument"
    rows = [{"script": "a.sh", **refused}, {"script": "b.sh", **_result(2, tyro.replace("vllm_gpu_memory_utilization", "x"))},
            {"script": "c.sh", **crash}, {"script": "d.sh", "status": "ran"}]
    assert categories(rows)[0] == ("unrecognized option `--infer_backend`", 2, ["a.sh", "b.sh"])
    assert ("ValueError: bad shape N at <path>", 1, ["c.sh"]) in categories(rows)
