"""swift_jax.eval: answer extraction, and multiple-choice / generation / loss metrics against transformers."""

import json

import numpy as np
import pytest
import torch
import transformers

import swift_jax
from infer_fixtures import build_chat_model
from swift_jax import eval as sj_eval
from swift_jax.infer import encode_chat


def test_extract_answer_gsm8k_and_last_number():
    assert sj_eval.extract_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert sj_eval.extract_answer("so the total is 1,234.") == "1234"
    assert sj_eval.extract_answer("It costs $18.00 in all, then 3 more? no: 18.50") == "18.5"
    assert sj_eval.extract_answer("  Paris. ") == "paris"
    assert sj_eval.extract_answer("#### ") == ""


def test_generation_metrics_hand_computed():
    predictions = ["The answer is 42.", "#### 7", "I think it is 12, not 13", "Paris is the capital"]
    references = ["#### 42", "7", "#### 12", "Paris"]
    # exact: 42 == 42, 7 == 7, 13 != 12, "paris is the capital" != "paris"; every response contains its reference
    assert sj_eval.generation_metrics(predictions, references) == {"exact_match": 0.5, "contains": 1.0}


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    path = build_chat_model(tmp_path_factory.mktemp("chat"), "qwen2", seed=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, hf, swift_jax.load_tokenizer(path)


def _hf_span_logprob(hf, ids, start):
    """Sum of transformers' log p(ids[j] | ids[:j]) for j >= start, and the argmax hits."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    js = range(start, len(ids))
    return sum(float(logp[j - 1, ids[j]]) for j in js), sum(int(logits[j - 1].argmax() == ids[j]) for j in js)


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _run(tmp_path, model, files, *extra):
    out = tmp_path / "result.json"
    argv = ["--model", model, "--eval_dataset", *files, "--result_path", str(out), "--max_batch_size", "4", *extra]
    sj_eval.main(argv)
    return json.loads(out.read_text())["results"]


def test_multiple_choice_matches_transformers_likelihoods(chat, tmp_path):
    path, hf, tok = chat
    questions = [
        ("What color is the sky?", ["blue", "green", "a red one"]),
        ("What is 6 times 7?", ["42", "13", "seven"]),
        ("Capital of France?", ["Berlin", "Paris", "Rome"]),
        ("Count: one two", ["three", "ten", "nine"]),
        ("Not used (eval_limit)", ["x", "y"]),
    ]
    template = "Question: {question}\nAnswer:"
    rows, acc, acc_norm = [], 0, 0
    for i, (q, choices) in enumerate(questions):
        context = tok.encode(template.format(question=q))
        scores = [_hf_span_logprob(hf, tok.encode(template.format(question=q) + " " + c), len(context))[0] for c in choices]
        best, best_norm = int(np.argmax(scores)), int(np.argmax([s / (len(c) + 1) for s, c in zip(scores, choices)]))
        gold = best if i % 2 == 0 else (best + 1) % len(choices)  # rows 0, 2 right by design, 1, 3 wrong
        answer = [gold, "ABC"[gold], choices[gold], gold, 0][i]  # index, letter and text forms
        rows.append({"question": q, "choices": choices, "answer": answer})
        if i < 4:
            acc += gold == best
            acc_norm += gold == best_norm
    res = _run(tmp_path, path, [_write(tmp_path / "mc.jsonl", rows)], "--eval_limit", "4")["mc.jsonl"]
    assert res["kind"] == "multiple_choice" and res["n"] == 4
    assert res["acc"] == acc / 4 == 0.5
    assert res["acc_norm"] == acc_norm / 4


def test_loss_and_generation_tasks(chat, tmp_path):
    path, hf, tok = chat
    conversations = [
        [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "It is 42."}],
        [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
    ]
    total = count = hits = 0
    for messages in conversations:
        prompt = encode_chat(tok, messages[:1])
        full = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
        lp, h = _hf_span_logprob(hf, full, len(prompt))
        total, count, hits = total + lp, count + len(full) - len(prompt), hits + h
    loss_file = _write(tmp_path / "loss.jsonl", [{"messages": m} for m in conversations])

    queries = ["What is 6 times 7?", "Capital of France?", "Count: one two"]
    responses = []
    for q in queries:
        ids = encode_chat(tok, [{"role": "user", "content": q}])
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0)
        responses.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True))
    answers = [responses[0], "#### 123456789", responses[2]]  # 2 of 3 match by construction
    gen_file = _write(tmp_path / "gen.jsonl", [{"question": q, "answer": a} for q, a in zip(queries, answers)])

    res = _run(tmp_path, path, [loss_file, gen_file], "--max_new_tokens", "8")
    loss = res["loss.jsonl"]
    assert loss["kind"] == "loss"
    np.testing.assert_allclose(loss["loss"], -total / count, rtol=1e-4)
    np.testing.assert_allclose(loss["perplexity"], np.exp(-total / count), rtol=1e-4)
    assert loss["token_acc"] == hits / count
    gen = res["gen.jsonl"]
    assert gen["kind"] == "generation" and gen["n"] == 3
    assert gen["exact_match"] == pytest.approx(2 / 3)


def test_bad_rows_name_file_and_row(chat, tmp_path):
    path, _, _ = chat
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 1}, {"question": "q2", "answer": 0}])
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: multiple-choice row lacks field\(s\) \['choices'\]"):
        _run(tmp_path, path, [bad])
    odd = _write(tmp_path / "odd.jsonl", [{"prompt": "q"}])
    with pytest.raises(ValueError, match=r"odd.jsonl row 0: cannot tell the task kind"):
        _run(tmp_path, path, [odd])
    wrong = _write(tmp_path / "wrong.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "Z"}])
    with pytest.raises(ValueError, match=r"wrong.jsonl row 0: answer 'Z' is not a choice"):
        _run(tmp_path, path, [wrong])
