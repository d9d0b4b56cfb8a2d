"""swift_jax.infer: batch inference to a result jsonl, interactive (streamed) chat, input errors."""

import io
import json

import numpy as np
import pytest
import torch
import transformers

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax import infer
from swift_jax.cli import parse_config


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("chat"), "llama", seed=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, hf, swift_jax.load_tokenizer(path)


def _hf_reply(hf, tok, messages, max_new_tokens):
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0)
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_batch_inference_writes_rows_with_response(chat, tmp_path):
    path, hf, tok = chat
    rows = [
        {"messages": [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "42"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]},
        {"query": "Count: one two", "id": 7},
        {"instruction": "Say the sky color.", "input": "one word"},
        {"conversations": [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "Hi"}]},  # sharegpt
        {"prompt": "Name a color.", "tag": "x"},  # `prompt` rows: one front end with training
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tmp_path / "out" / "result.jsonl"
    argv = ["--model", path, "--val_dataset", str(data), "--result_path", str(result), "--max_new_tokens", "12"]
    infer.main([*argv, "--max_batch_size", "2", "--system", "You are a bot."])
    got = [json.loads(line) for line in result.read_text().splitlines()]
    prompts = [
        [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "What is 6 times 7?"}],
        rows[1]["messages"],  # its own system prompt wins
        [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Count: one two"}],
        [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Say the sky color.\none word"}],
        [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Hello there"}],
        [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Name a color."}],
    ]
    assert len(got) == 6
    for row, out, messages in zip(rows, got, prompts):
        assert {k: v for k, v in out.items() if k != "response"} == row
        assert out["response"] == _hf_reply(hf, tok, messages, 12)


def test_interactive_chat_streams_and_keeps_history(chat):
    path, hf, tok = chat
    args = parse_config(infer.InferArgs, ["--model", path, "--stream", "true", "--max_new_tokens", "6"])
    assert args.stream is True
    model, tokenizer = infer.load_for_inference(path)
    gen = infer.Generator(model, tokenizer)
    stdout = io.StringIO()
    infer.chat_loop(gen, args, stdin=io.StringIO("What is 6 times 7?\nand 6 times 8?\nclear\nhi\nexit\n"), stdout=stdout)
    first = _hf_reply(hf, tok, [{"role": "user", "content": "What is 6 times 7?"}], 6)
    second = _hf_reply(
        hf,
        tok,
        [
            {"role": "user", "content": "What is 6 times 7?"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "and 6 times 8?"},
        ],
        6,
    )
    third = _hf_reply(hf, tok, [{"role": "user", "content": "hi"}], 6)  # history cleared
    assert stdout.getvalue() == f"<<< {first}\n<<< {second}\n<<< <<< {third}\n<<< "


def test_val_dataset_hash_n_samples_rows(chat, tmp_path):
    """`--val_dataset data.jsonl#N` answers the first N rows (ms-swift's validation sets are not shuffled)."""
    path, _, _ = chat
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"query": f"Count: {w}"}) + "\n" for w in ("one", "two", "three")))
    result = tmp_path / "result.jsonl"
    infer.main(["--model", path, "--val_dataset", f"{data}#2", "--result_path", str(result), "--max_new_tokens", "2"])
    assert [json.loads(line)["query"] for line in result.read_text().splitlines()] == ["Count: one", "Count: two"]


def test_input_errors_are_clear(chat, tmp_path):
    path, _, _ = chat
    with pytest.raises(FileNotFoundError, match="--adapters .*nope: no such folder"):
        infer.main(["--model", path, "--adapters", str(tmp_path / "nope")])
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"query": "ok"}) + "\n" + json.dumps({"prompt_text": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: unknown row format with keys \['prompt_text'\]"):
        infer.main(["--model", path, "--val_dataset", str(data)])
    renamed = parse_config(infer.InferArgs, ["--model", path, "--columns", "prompt_text", "query"])
    assert renamed.columns == {"prompt_text": "query"}  # training's --columns: the row above then reads
    assert infer.prompt_of({"prompt_text": "hi"}, where="r", columns=renamed.columns).messages == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="missing.jsonl: no such file or folder"):
        infer.main(["--model", path, "--val_dataset", str(tmp_path / "missing.jsonl")])
    images = tmp_path / "images.jsonl"
    images.write_text(json.dumps({"query": "What is it?", "images": ["cat.png"]}) + "\n")
    with pytest.raises(ValueError, match="images.jsonl row 0: field 'images' holds media"):
        infer.main(["--model", path, "--val_dataset", str(images)])


def test_template_renders_prompts_as_training_does(chat, tmp_path):
    """--template qwen2_5: the prompt is ms-swift's rendering (its default system prompt), the training encoder's."""
    from swift_jax.data import DataArgs
    from swift_jax.data.samples import SampleProcessor

    path, _, tok = chat
    row = {"messages": [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "42"}]}
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    args = parse_config(infer.InferArgs, ["--model", path, "--template", "qwen2_5", "--val_dataset", str(data)])
    ids = args.chat_encoder(tok).prompt_ids(row["messages"][:1])
    assert tok.decode(ids) == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                               "<|im_end|>\n<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")
    trained = SampleProcessor(DataArgs(template="qwen2_5"), tok)((row, "f"))
    assert trained["input_ids"][: len(ids)].tolist() == ids  # training saw the same prompt tokens
    # a checkpoint trained here carries its template in args.json: infer reuses it without --template
    ckpt = tmp_path / "run" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "args.json").write_text(json.dumps({"data": {"template": "qwen2_5", "system": "Be brief."}}))
    saved = infer.InferArgs(model=path, adapters=[str(ckpt)]).chat_encoder(tok).prompt_ids(row["messages"][:1])
    assert tok.decode(saved).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_merge_lora_answers_with_the_merged_adapter(chat, tmp_path):
    import jax
    from flax import nnx

    from swift_jax.hf.peft import save_peft_adapter
    from swift_jax.tuners import loraize

    path, _, _ = chat
    model = swift_jax.load_model(path)
    loraize(model, rank=4, alpha=8, dropout=0.0, rngs=nnx.Rngs(0))
    for i, (_, var) in enumerate(v for v in nnx.iter_graph(model) if isinstance(v[1], nnx.LoRAParam)):
        var[...] = 0.3 * jax.random.normal(jax.random.key(i), var.shape, var.dtype)
    adapter = tmp_path / "checkpoint-5"
    save_peft_adapter(model, str(adapter), base_model_name_or_path=path)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"query": "What is 6 times 7?"}) + "\n" + json.dumps({"query": "Name a color."}) + "\n")
    answers = {}
    for name, flags in (("adapter", ["--adapters", str(adapter)]),
                        ("merged", ["--adapters", str(adapter), "--merge_lora", "true"])):
        infer.main([*flags, "--val_dataset", str(data), "--result_path", str(tmp_path / f"{name}.jsonl"), "--max_new_tokens", "8"])
        answers[name] = [json.loads(line)["response"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert (tmp_path / "checkpoint-5-merged" / "model.safetensors").exists()  # ms-swift's folder
    assert answers["merged"] == answers["adapter"]
    from safetensors.numpy import load_file

    merged, base = load_file(str(tmp_path / "checkpoint-5-merged" / "model.safetensors")), load_file(f"{path}/model.safetensors")
    assert not np.allclose(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


def test_cached_val_dataset_rows_are_answered_as_their_source_rows(chat, tmp_path):
    """`infer --cached_val_dataset DIR/val` (a folder `export --to_cached_dataset true` wrote) answers its rows as
    `--val_dataset` answers the rows it was made from."""
    from swift_jax.export import main as export_main

    path, _, _ = chat
    rows = [{"messages": [{"role": "user", "content": f"Count to {n}"}, {"role": "assistant", "content": "1 2"}]}
            for n in (2, 3, 4, 5)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    export_main(["--model", path, "--to_cached_dataset", "true", "--dataset", str(data), "--val_dataset", str(data),
                 "--max_length", "64", "--output_dir", str(tmp_path / "cached")])
    common = ["--model", path, "--max_new_tokens", "6"]
    infer.main([*common, "--val_dataset", str(data), "--result_path", str(tmp_path / "raw.jsonl")])
    infer.main([*common, "--cached_val_dataset", str(tmp_path / "cached" / "val"), "--result_path", str(tmp_path / "cached.jsonl")])
    raw, cached = ([json.loads(line) for line in (tmp_path / f).read_text().splitlines()] for f in ("raw.jsonl", "cached.jsonl"))
    assert [r["response"] for r in cached] == [r["response"] for r in raw] and len(raw) == 4
    assert [r["messages"] for r in cached] == [r["messages"] for r in raw]
