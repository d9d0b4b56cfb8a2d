"""One argument schema for every command (shared groups, per-command defaults, YAML), the template's stop words
at generation, per-row chat_template_kwargs, and export reusing the template a checkpoint was trained with."""

import json
import os
import shutil

import pytest

import swift_jax
from infer_fixtures import build_chat_model
from tiny_models import build_hf_model, save_hf_model
from tokenizers_for_tests import qwen3_tokenizer
from swift_jax.arguments import AdapterArgs, GenerationArgs, ModelArgs, SamplingArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES, TrainArguments
from swift_jax.deploy import ChatServer, DeployArgs
from swift_jax.eval import EvalArgs
from swift_jax.export import ExportArgs, main as export_main
from swift_jax.generation import Generator
from swift_jax.infer import InferArgs, infer_dataset, load_for_inference
from swift_jax.rlhf.__main__ import GRPOArguments

GOLDEN_TOKENIZER = os.path.join(os.path.dirname(__file__), "golden", "templates", "tokenizer")


def test_every_command_composes_the_shared_groups(tmp_path):
    """infer/eval/deploy/export inherit the groups, training nests them; each takes YAML (`--config` or ms-swift
    4's positional file) and keeps ms-swift's per-command defaults."""
    for cls in (InferArgs, EvalArgs, DeployArgs):
        assert issubclass(cls, (ModelArgs, AdapterArgs, TemplateArgs, GenerationArgs))
    assert issubclass(ExportArgs, TemplateArgs) and issubclass(ExportArgs, AdapterArgs)
    recipe = tmp_path / "run.yaml"
    recipe.write_text("model: m\ntemplate: qwen2_5\nsystem: Be brief.\nenable_thinking: false\n")
    for cls, extra in ((InferArgs, []), (EvalArgs, ["--eval_dataset", "t.jsonl"]), (DeployArgs, ["--port", "0"]), (ExportArgs, [])):
        for argv in (["--config", str(recipe), *extra], [str(recipe), *extra]):
            args = parse_config(cls, argv, aliases=ALIASES)
            assert (args.model, args.template, args.system, args.enable_thinking) == ("m", "qwen2_5", "Be brief.", False)
    train = parse_config(TrainArguments, [str(recipe)], aliases=ALIASES)
    assert (train.model_args.model, train.data.template, train.data.system) == ("m", "qwen2_5", "Be brief.")
    infer = parse_config(InferArgs, ["--model", "m", "--torch_dtype", "bfloat16", "--stop_words", "END", "--stream", "true"], aliases=ALIASES)
    assert (infer.dtype, infer.stop_words, infer.stream, infer.temperature, infer.max_new_tokens) == ("bfloat16", ["END"], True, 0.0, 512)
    assert parse_config(EvalArgs, ["--eval_dataset", "t.jsonl"]).max_new_tokens == 256
    grpo = parse_config(GRPOArguments, ["--model", "m", "--rlhf_type", "grpo"], aliases=ALIASES)
    assert isinstance(grpo.grpo, SamplingArgs) and (grpo.grpo.temperature, grpo.grpo.top_k) == (0.9, -1)
    assert parse_config(GRPOArguments, ["--model", "m", "--temperature", "0.7"]).grpo.temperature == 0.7
    with pytest.raises(SystemExit):  # a training-only flag is no inference flag
        parse_config(InferArgs, ["--model", "m", "--lora_rank", "8"])


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_generation_stops_at_the_template_stop_token(tmp_path):
    """ms-swift stops at the template's stop words beside the eos: infer and deploy (and eval, prediction) do too.
    The model's eos (<|endoftext|>) differs from the phi3 template's suffix token <|end|>; its lm_head row of <|end|>
    is copied from the token its greedy answer emits at step k (ties pick the lower id, <|end|>), so the template's
    stop token comes at step k, and transformers' greedy decoding (eos only) runs past it."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GOLDEN_TOKENIZER)
    end = tok.convert_tokens_to_ids("<|end|>")
    hf = build_hf_model("qwen2", vocab_size=len(tok), eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    args = InferArgs(template="phi3", max_new_tokens=8)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = args.chat_encoder(tok).prompt_ids(question)
    greedy = _hf_greedy(hf, prompt, 8)
    k = max(greedy.index(t) for t in greedy[:6])  # the latest first occurrence: some text before the stop
    with torch.no_grad():
        hf.lm_head.weight[end] = hf.lm_head.weight[greedy[k]]
    assert end != tok.eos_token_id and _hf_greedy(hf, prompt, 8)[: k + 1] == greedy[:k] + [end]
    path = save_hf_model(hf, str(tmp_path / "model"))
    tok.save_pretrained(path)
    model, _ = load_for_inference(path)
    gen = Generator(model, tok)
    args.model = path
    encoder = args.chat_encoder(tok)
    out = gen.generate_ids([prompt], args.generation_config(gen, encoder))[0]
    assert out.token_ids == greedy[:k] and out.finish_reason == "stop"
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"query": question[0]["content"], "response": "Paris"}) + "\n")
    args.val_dataset, args.result_path = [str(data)], str(tmp_path / "out.jsonl")
    infer_dataset(gen, args)
    assert json.loads(open(args.result_path).read())["response"] == tok.decode(greedy[:k], skip_special_tokens=True)
    reply = ChatServer(gen, DeployArgs(model=path, template="phi3", max_new_tokens=8)).complete({"messages": question})
    assert reply["choices"][0]["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] == k


def test_row_chat_template_kwargs_in_training_and_inference():
    """A row's chat_template_kwargs switch thinking for that row alone, in training (SampleProcessor) and in the
    inference prompt (prompt_of + ChatEncoder), for ms-swift's qwen3 template and for the tokenizer's Jinja."""
    from swift_jax.data import DataArgs
    from swift_jax.data.errors import DataError
    from swift_jax.data.frontend import chat_encoder, prompt_of
    from swift_jax.data.samples import SampleProcessor
    from swift_jax.data.swift_template import ThinkingArgs

    tok = qwen3_tokenizer()
    messages = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
                {"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "6"}]
    row = {"messages": messages, "chat_template_kwargs": {"preserve_thinking": False}}
    trained = SampleProcessor(DataArgs(template="qwen3"), tok)((row, "r"))["input_ids"].tolist()
    run_wide = chat_encoder(tok, "qwen3", thinking=ThinkingArgs(preserve_thinking=False)).encode({"messages": messages})
    plain = SampleProcessor(DataArgs(template="qwen3"), tok)(({"messages": messages}, "r"))["input_ids"].tolist()
    assert trained == run_wide.input_ids.tolist() != plain and "add" not in tok.decode(trained)
    for template in ("qwen3", None):  # ms-swift's qwen3 (thinking prefix "") and the tokenizer's Jinja
        encoder = chat_encoder(tok, template)
        prompt = prompt_of({"query": "2 + 2?", "chat_template_kwargs": json.dumps({"enable_thinking": False})}, where="r")
        off = tok.decode(encoder.prompt_ids(prompt.messages, prompt.tools, prompt.chat_template_kwargs))
        on = tok.decode(encoder.prompt_ids(prompt.messages, prompt.tools, {"enable_thinking": True}))
        assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n")
    with pytest.raises(DataError, match="row 3: 'chat_template_kwargs' must be an object"):
        prompt_of({"query": "hi", "chat_template_kwargs": [1]}, where="row 3")


def test_export_reuses_the_trained_template(tmp_path):
    """A checkpoint whose args.json records template and system: export renders GPTQ calibration rows with them
    (as the flags would) and carries them into the exported folder, where infer picks them up."""
    from swift_jax.data.frontend import chat_encoder, trained_template_args
    from swift_jax.quant.calibration import calibration_rows

    path = build_chat_model(tmp_path / "trained")
    with open(os.path.join(path, "args.json"), "w") as f:
        json.dump({"data": {"template": "qwen2_5", "system": "Be brief."}}, f)
    row = {"messages": [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "It is 42."}]}
    calib = tmp_path / "calib.jsonl"
    calib.write_text(json.dumps(row) + "\n")
    tok = swift_jax.load_tokenizer(path)
    args = parse_config(ExportArgs, ["--model", path, "--quant_method", "gptq", "--dataset", str(calib)])
    expected = chat_encoder(tok, "qwen2_5", "Be brief.").encode(row).input_ids
    got = calibration_rows(args.trained_encoder(tok, *args.adapters, args.model), [str(calib)], n_samples=1, seq_len=24)
    assert got[0].tolist() == expected[:24].tolist() and "Be brief." in tok.decode(expected)
    untrained = shutil.copytree(path, tmp_path / "untrained", ignore=shutil.ignore_patterns("args.json"))
    plain = parse_config(ExportArgs, ["--model", str(untrained)])
    assert calibration_rows(plain.trained_encoder(tok, plain.model), [str(calib)], n_samples=1, seq_len=24)[0].tolist() != got[0].tolist()
    out = tmp_path / "int8"
    export_main(["--model", path, "--quant_method", "rtn", "--quant_bits", "8", "--group_size", "-1", "--output_dir", str(out)])
    assert trained_template_args(str(out)) == {"template": "qwen2_5", "system": "Be brief."}
