"""ms-swift's commands run as written (issue 27): generation with ms-swift's default LoRA dropout, named adapters in
deploy, PiSSA/OLoRA checkpoints, and the argument spellings ms-swift users type."""

import json
import os
import threading

import openai
import pytest
from flax import nnx

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax import infer
from swift_jax.cli import parse_config
from swift_jax.hf.peft import load_peft_adapter, save_peft_adapter
from swift_jax.infer import InferArgs, encode_chat
from swift_jax.tuners import loraize

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
QUESTIONS = ["What is 6 times 7?", "Name the capital of France.", "one two three four five"]
MESSAGES = [{"role": "user", "content": QUESTIONS[0]}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny chat model and a LoRA adapter saved with ms-swift's default `lora_dropout 0.05` (B drawn, so the
    adapter changes the answers), and a dataset of three questions."""
    root = tmp_path_factory.mktemp("tiny")
    base = build_chat_model(root / "base", "qwen2", seed=4)
    model = swift_jax.load_model(base, dtype="float32")
    loraize(model, target_modules=["q_proj", "v_proj"], rank=4, alpha=32, dropout=0.05, rngs=nnx.Rngs(0), init_weights="false")
    save_peft_adapter(model, str(root / "adapter"), base_model_name_or_path=base, lora_dropout=0.05)
    data = root / "q.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n" for q in QUESTIONS))
    return base, str(root / "adapter"), str(data)


def _replies(base, adapter=None, questions=QUESTIONS, max_new_tokens=12):
    """Greedy replies of the base model (with `adapter` loaded without dropout): the reference."""
    from swift_jax.generation import GenerationConfig, Generator

    model = swift_jax.load_model(base, dtype="float32")
    if adapter:
        load_peft_adapter(model, adapter, dropout=0.0)
    gen = Generator(model, swift_jax.load_tokenizer(base))
    prompts = [encode_chat(gen.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    return [out.text for out in gen.generate_ids(prompts, GenerationConfig(max_new_tokens=max_new_tokens))]


def test_infer_with_a_dropout_lora_adapter_answers_as_without_dropout(tiny, tmp_path):
    """`swift-jax infer --adapters CKPT` of an adapter trained with dropout: generation runs dropout-free
    (before: flax TraceContextError 'Cannot mutate RngCount from a different trace level')."""
    base, adapter, data = tiny
    result = tmp_path / "result.jsonl"
    infer.main(["--adapters", adapter, "--val_dataset", data, "--max_new_tokens", "12", "--result_path", str(result)])
    responses = [json.loads(line)["response"] for line in result.read_text().splitlines()]
    assert responses == _replies(base, adapter) != _replies(base)


def test_deploy_serves_named_adapters_by_request_model(tiny):
    """`swift-jax deploy --model BASE --adapters tuned=CKPT` (ms-swift's named adapters): /v1/models lists the
    base model and `tuned`; a request's `model` picks the adapter (dropout-free: before, the request got an empty
    reply); an unknown name is a 400 naming the list."""
    from swift_jax.deploy import DeployArgs, build_server

    base, adapter, _ = tiny
    argv = ["--model", base, "--adapters", f"tuned={adapter}", "--served_model_name", "tiny", "--port", "0", "--max_new_tokens", "12"]
    chat, server = build_server(parse_config(DeployArgs, argv))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="-", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "tuned"]
        tuned = client.chat.completions.create(model="tuned", messages=MESSAGES, temperature=0)
        assert tuned.model == "tuned" and tuned.choices[0].message.content == _replies(base, adapter, QUESTIONS[:1])[0]
        plain = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0)
        assert plain.choices[0].message.content == _replies(base, None, QUESTIONS[:1])[0]
        with pytest.raises(openai.BadRequestError, match="not in the model_list"):
            client.chat.completions.create(model="other", messages=MESSAGES)
    finally:
        server.shutdown()
        server.server_close()


def test_named_adapters_parse_in_every_inference_command(tiny):
    """infer, eval and export read ms-swift's `name=path` too: the name is stripped, the folder applied."""
    from swift_jax.eval import EvalArgs
    from swift_jax.export import ExportArgs

    _, adapter, _ = tiny
    for cls in (InferArgs, EvalArgs, ExportArgs):
        args = parse_config(cls, ["--adapters", f"mine={adapter}"])
        assert args.adapter_paths() == [adapter] and args.adapter_entries() == [("mine", adapter)]
    with pytest.raises(ValueError, match="given twice"):
        InferArgs(adapters=[f"a={adapter}", f"a={adapter}"]).adapter_entries()


def _sft(output_dir, *flags, env=()):
    """`swift-jax sft` on the quickstart assets with ms-swift's LoRA defaults (rank 8, alpha 32, dropout 0.05), on one
    CPU device (a subprocess, as a user runs it); returns (run folder, output)."""
    import subprocess
    import sys

    argv = ["--model", QUICK, "--init_from_scratch", "true", "--dtype", "float32", "--dataset", os.path.join(QUICK, "train.jsonl") + "#8",
            "--max_length", "32", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--report_to", "none",
            "--output_dir", str(output_dir), "--max_steps", "1", "--save_steps", "1", *flags]
    environ = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **dict(env)}
    proc = subprocess.run([sys.executable, "-m", "swift_jax.train", *argv], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run,) = os.listdir(output_dir)
    return os.path.join(output_dir, run), proc.stdout + proc.stderr


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_sft_pissa_olora_checkpoint_predictions_and_trackers(tmp_path, init):
    """`sft --init_weights pissa|olora` writes its checkpoint (before: 'Array has been deleted' at the first save:
    the initial adapter shared the donated adapter's buffer); `--num_predict_samples` answers with the
    dropout-carrying adapter (before: TraceContextError under models/scan.py); the pissa run also reports to
    wandb and swanlab in their offline modes (before: `--report_to wandb swanlab` logged nowhere)."""
    val = tmp_path / "val.jsonl"
    with open(os.path.join(QUICK, "val.jsonl")) as f:
        val.write_text("".join(f.readlines()[:2]))
    trackers = ["--report_to", "wandb", "swanlab", "--swanlab_mode", "offline"] if init == "pissa" else []
    run_dir, output = _sft(tmp_path / "out", "--init_weights", init, "--num_predict_samples", "2", "--val_dataset", str(val),
                           "--predict_max_new_tokens", "4", *trackers, env={"WANDB_MODE": "offline"})
    with open(os.path.join(run_dir, "checkpoint-1", "adapter_config.json")) as f:
        config = json.load(f)
    assert config["r"] == 16 and config["lora_dropout"] == 0.05  # PEFT's converted rank-2r LoRA
    assert "held-out exact match" in output
    if trackers:  # each tracker's run file holds the logged scalars
        import glob

        for pattern in ("wandb/offline-run-*/run-*.wandb", "swanlog/run-*/run-*.swanlab"):
            (path,) = glob.glob(os.path.join(run_dir, pattern))
            with open(path, "rb") as f:
                assert b"train/loss" in f.read(), pattern


def _train_args(*flags):
    from swift_jax.config import ALIASES, TrainArguments

    base = ["--model", QUICK, "--dataset", os.path.join(QUICK, "train.jsonl")]
    return parse_config(TrainArguments, [*base, *flags], aliases=ALIASES).validate()


def test_system_txt_is_read_as_a_file_as_ms_swift(tmp_path, monkeypatch):
    """ms-swift's TemplateArguments: `--system X.txt` is the file's text, `\\n` in a literal value is a newline."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompt.txt").write_text("You are a pirate.\nAnswer in one line.", encoding="utf-8")
    assert _train_args("--system", "prompt.txt").data.system == "You are a pirate.\nAnswer in one line."
    assert parse_config(InferArgs, ["--system", "prompt.txt"]).system == "You are a pirate.\nAnswer in one line."
    assert parse_config(InferArgs, ["--system", "Line one.\\nLine two."]).system == "Line one.\nLine two."
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        parse_config(InferArgs, ["--system", "missing.txt"])


def test_lora_with_quant_bits_trains_qlora():
    """`--tuner_type lora --quant_bits 4` is ms-swift's QLoRA spelling: the base is quantized, as --tuner_type qlora."""
    assert _train_args("--tuner_type", "lora", "--quant_bits", "4").tuner.tuner_type == "qlora"
    qlora = _train_args("--tuner_type", "qlora").tuner
    assert (qlora.tuner_type, qlora.quant_bits) == ("qlora", 4)
    plain = _train_args("--tuner_type", "lora").tuner
    assert (plain.tuner_type, plain.quant_bits) == ("lora", None)
    with pytest.raises(ValueError, match="--quant_bits 4 quantizes a frozen base for LoRA"):
        _train_args("--tuner_type", "full", "--quant_bits", "4")


@pytest.mark.parametrize("name, backend", [("flash_attn", "auto"), ("flash_attention_2", "auto"), ("sdpa", "auto"), ("eager", "xla")])
def test_ms_swift_attn_impl_names_map_to_backends(name, backend):
    """`--attn_impl flash_attn|sdpa|eager` (transformers' names) run this project's backends (before: refused at the
    first step); an unknown name is refused when the arguments are read."""
    import jax.numpy as jnp

    from swift_jax.kernels.attention import resolve_impl, use_impl

    assert _train_args("--attn_impl", name).model_args.attn_impl == name
    q = jnp.zeros((1, 8, 2, 16), jnp.float32)
    expected = resolve_impl(backend, q, q, platform="cpu")  # outside any use_impl block: the backend's own choice
    with use_impl(name):
        assert resolve_impl("auto", q, q, platform="cpu") == expected
    with pytest.raises(ValueError, match="--attn_impl flash: .*ms-swift's names"):
        _train_args("--attn_impl", "flash")


def test_rlhf_type_choices_include_grpo(capsys, monkeypatch):
    """`swift-jax rlhf --help` lists grpo among --rlhf_type's choices, and `--rlhf_type=grpo` selects GRPO's group."""
    from swift_jax.rlhf.__main__ import RLHFArguments, requested_rlhf_type

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        parse_config(RLHFArguments, ["--help"])
    assert "{dpo,orpo,simpo,cpo,kto,rm,grpo}" in capsys.readouterr().out
    assert requested_rlhf_type(["--rlhf_type=grpo"]) == "grpo"


@pytest.fixture
def swift_aliases():
    """Remove the `swift` import aliases a test installs (ms-swift is not installed in the test environment)."""
    import sys

    from swift_jax.rewards import swift_compat

    yield swift_compat
    for name in swift_compat.ALIASES:
        sys.modules.pop(name, None)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, swift_compat._AliasFinder)]


def test_external_plugins_written_for_ms_swift_load_unchanged(tmp_path, swift_aliases):
    """A plugin file as ms-swift 4.6 writes it (`from swift.rewards import ORM, orms`, 3.x's `swift.plugin`) loads
    with `--external_plugins` (before: ModuleNotFoundError: No module named 'swift'); what swift_jax lacks
    (AsyncORM, multi-turn schedulers) is an ImportError saying what to change."""
    from swift_jax.rewards import ORM, load_plugins, orms

    plugin = tmp_path / "plugin.py"
    plugin.write_text("from swift.rewards import ORM, orms\nfrom swift.plugin import orms as orms3\nfrom swift.utils import get_logger\n\n"
                      "class Shout(ORM):\n    def __call__(self, completions, **kwargs):\n"
                      "        return [float(c.isupper()) for c in completions]\n\norms['shout'] = Shout\n")
    try:
        assert issubclass(load_plugins([str(plugin)])["shout"], ORM)
    finally:
        orms.pop("shout", None)
    for line in ("from swift.rewards import AsyncORM", "from swift.rollout.multi_turn import MultiTurnScheduler"):
        (tmp_path / "async_plugin.py").write_text(line + "\n")
        with pytest.raises(RuntimeError, match="not available without ms-swift; swift_jax provides .*swift_jax.rewards import ORM, orms"):
            load_plugins([str(tmp_path / "async_plugin.py")])


IMAGE_ROW = {"messages": [{"role": "user", "content": "<image>What is shown?"}, {"role": "assistant", "content": "A cat."}],
             "rejected_response": "A dog.", "label": True, "images": ["cat.png"]}


def test_image_rows_name_the_text_only_path_not_the_model(tmp_path):
    """Image rows in DPO/KTO, GRPO and GPTQ calibration: the error names the row and the path that reads text only
    (before: 'the model is text-only', untrue for a Qwen2.5-VL model)."""
    from swift_jax.data import DataArgs
    from swift_jax.data.errors import DataError
    from swift_jax.modeling import load_tokenizer
    from swift_jax.quant.calibration import calibration_rows
    from swift_jax.rlhf.preference.data import build_preference_data
    from swift_jax.rlhf.grpo.data import load_prompt_rows

    data = tmp_path / "vl.jsonl"
    data.write_text(json.dumps(IMAGE_ROW) + "\n")
    tokenizer = load_tokenizer(QUICK)
    for rlhf_type in ("dpo", "kto"):
        with pytest.raises((DataError, ValueError)) as err:
            build_preference_data(DataArgs(dataset=[str(data)]), tokenizer, rlhf_type, batch_size=2)
        assert "vl.jsonl" in str(err.value) and "preference training" in str(err.value) and "text-only" not in str(err.value)
    with pytest.raises((DataError, ValueError), match=r"vl.jsonl.*GRPO \(--rlhf_type grpo\) reads text rows only"):
        load_prompt_rows([str(data)])
    with pytest.raises(DataError, match=r"vl.jsonl row 0: .*GPTQ calibration .* reads text rows only"):
        calibration_rows(DataArgs().chat_encoder(tokenizer), [str(data)], n_samples=1, seq_len=8)


def test_report_to_a_missing_tracker_names_the_extra(monkeypatch):
    """`--report_to wandb|swanlab` without the package is refused before training, naming the extra (before: exit 0
    and no logs anywhere); unknown names are refused too."""
    import sys

    for name in ("wandb", "swanlab"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: `import name` raises ImportError
        with pytest.raises(ValueError, match=rf"--report_to {name}: .*pip install 'swift-jax\[{name}\]'"):
            _train_args("--report_to", "tensorboard", name)
    with pytest.raises(ValueError, match="--report_to mlflow: expected any of tensorboard, wandb, swanlab, none"):
        _train_args("--report_to", "mlflow")
    assert _train_args("--report_to", "none").training.report_to == ["none"]


@pytest.fixture(scope="module")
def reward_model(tiny, tmp_path_factory):
    """A reward model (value head, as `--rlhf_type rm` saves it) on the tiny chat model."""
    from swift_jax.tuners.value_head import attach_value_head

    base = tiny[0]
    model = attach_value_head(swift_jax.load_model(base, dtype="float32"), seed=5)
    model.score.kernel[...] = model.score.kernel[...] * 50  # scores well apart
    folder = tmp_path_factory.mktemp("rm") / "my_rm"
    swift_jax.save_pretrained(model, str(folder))
    swift_jax.load_tokenizer(base).save_pretrained(str(folder))
    return str(folder)


def test_reward_model_under_infer_and_deploy_returns_scores(reward_model, tmp_path):
    """A reward model under `infer` writes each conversation's score as `response`, and `deploy` answers with the score
    as the message content, as ms-swift's seq_cls inference does (before: generated text); the scores are the
    GRPO scorer's (`--reward_model`, checked against transformers' *ForSequenceClassification)."""
    import urllib.request

    from swift_jax.deploy import DeployArgs, build_server
    from swift_jax.rlhf.reward_model import ModelReward

    answers = ["42.", "Paris."]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in zip(QUESTIONS, answers)))
    expected = ModelReward(reward_model)(answers, messages=[[{"role": "user", "content": q}] for q in QUESTIONS[:2]])
    result = tmp_path / "scores.jsonl"
    infer.main(["--model", reward_model, "--val_dataset", str(data), "--result_path", str(result)])
    scores = [json.loads(line)["response"] for line in result.read_text().splitlines()]
    assert scores == pytest.approx(expected, abs=1e-4) and abs(scores[0] - scores[1]) > 1e-3

    chat, server = build_server(parse_config(DeployArgs, ["--model", reward_model, "--port", "0", "--served_model_name", "rm"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = {"model": "rm", "messages": [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": answers[0]}]}
        request = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert reply["choices"][0]["message"]["content"] == pytest.approx(expected[0], abs=1e-4)
        assert reply["choices"][0]["finish_reason"] == "stop"
    finally:
        server.shutdown()
        server.server_close()
