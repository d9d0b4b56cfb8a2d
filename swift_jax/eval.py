"""`python -m swift_jax.eval`: loss / perplexity, multiple choice and generation metrics over task files.

    python -m swift_jax.eval --model out/merged --eval_dataset mc.jsonl gsm8k.jsonl --eval_limit 100

A task file (`.jsonl`, `.json` list or `.parquet`) holds one kind of task, told by its first row:

- multiple choice: `{"question": str, "choices": [str, ...], "answer": 0 | "B" | "<choice text>"}`.
  Each choice is scored by the total log-probability of `" " + choice` after the prompt
  `--mc_template` (default `"Question: {question}\\nAnswer:"`); `acc` picks the highest total,
  `acc_norm` the highest per character of the choice (lm-eval's length normalisation).
- generation: `{"question" | "query": str, "answer": str}` or `{"messages": [...], "answer": str}`.
  The model answers (greedily unless --temperature; with the run's template); the answer is extracted from
  the response and from the reference alike (`extract_answer`: after the last `####`, else the last
  number, else the whole text). `exact_match`: extracted answers equal; `contains`: the reference's
  extracted answer appears in the response.
- loss: `{"messages": [..., {"role": "assistant", ...}]}` (the last assistant turn is scored) or
  `{"text": str}` (every token). Reports `loss` (mean token NLL), `perplexity`, `token_acc`.

Every forward pass runs in one jit-compiled function over `[max_batch_size, bucket]` batches, so a
task compiles once per length bucket. Results go to a JSON file and a printed table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swift_jax.arguments import AdapterArgs, GenerationArgs, ModelArgs, SavedArgs, TemplateArgs
from swift_jax.cli import parse_config
from swift_jax.config import ALIASES
from swift_jax.data.frontend import prompt_of, read_rows
from swift_jax.data.resolve import LoadOptions
from swift_jax.data.media import row_media
from swift_jax.data.vision import prompt_inputs, vision_for_inference
from swift_jax.data.templates import IGNORE
from swift_jax.engine.args import EngineArgs
from swift_jax.generation import Generator, bucket
from swift_jax.infer import load_for_inference


@dataclasses.dataclass
class EvalArgs(ModelArgs, AdapterArgs, SavedArgs, TemplateArgs, GenerationArgs, EngineArgs):
    """Arguments of `swift_jax.eval`: the shared model, adapter, template and generation groups
    (`swift_jax.arguments`), the engine's size (`engine.args`), plus the task settings (names follow ms-swift's
    EvalArguments)."""

    eval_dataset: list[str] = dataclasses.field(default_factory=list)
    """Task files, see the module docstring for the row formats."""
    max_new_tokens: int = 256
    """Tokens generated per answer of a generation task at most."""
    eval_limit: int | None = None
    """First N rows of each task."""
    max_batch_size: int = 8
    """Rows scored or generated together."""
    max_length: int = 2048
    """Longer scored sequences are an error (naming the row)."""
    mc_template: str = "Question: {question}\nAnswer:"
    """Prompt of multiple-choice rows; each choice is scored after it."""
    result_path: str = "eval_result.json"
    """Where the metrics are written (JSON)."""


# ---------------------------------------------------------------------------------------------------
# Scoring: per-token log-probabilities of given targets, in one compiled function
# ---------------------------------------------------------------------------------------------------

_CHUNK = 128  # positions projected to the vocabulary at once: bounds the [batch, chunk, vocab] logits


def _token_scores(graphdef, params, ids, mask):
    """Log-prob of each next token and whether it is the argmax: two `[batch, seq - 1]` arrays."""
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(ids, segment_ids=mask)  # [b, s, e]
    batch, seq, embed = hidden.shape
    chunk = min(seq, _CHUNK)
    targets = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)  # [b, s]; the last column is unused

    def score(args):
        h, t = args  # [b, chunk, e], [b, chunk]
        logits = model.logits(h).astype(jnp.float32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), t[..., None], axis=-1)[..., 0]
        return logp, jnp.argmax(logits, axis=-1) == t

    split = lambda x: jnp.moveaxis(x.reshape(batch, seq // chunk, chunk, *x.shape[2:]), 1, 0)
    logp, hit = jax.lax.map(score, (split(hidden), split(targets)))  # [n, b, chunk]
    join = lambda x: jnp.moveaxis(x, 0, 1).reshape(batch, seq)[:, :-1]
    return join(logp), join(hit)


_token_scores_jit = jax.jit(_token_scores, static_argnums=(0,))


class Scorer:
    """Sums log-probabilities of target spans of token sequences, `max_batch_size` rows per compiled call."""

    def __init__(self, model: nnx.Module, *, max_batch_size: int = 8, max_length: int = 2048):
        self.graphdef, self.params = nnx.split(model)
        self.max_batch_size, self.max_length = max_batch_size, max_length

    def score(self, sequences: Sequence[tuple[list[int], int]], where: Sequence[str]) -> list[tuple[float, int, int]]:
        """For each `(ids, start)`: (sum log p(ids[j] | ids[:j]) for j >= start, tokens scored, argmax hits)."""
        out = []
        for lo in range(0, len(sequences), self.max_batch_size):
            part = sequences[lo : lo + self.max_batch_size]
            longest = max(len(ids) for ids, _ in part)
            if longest > self.max_length:
                bad = next(w for (ids, _), w in zip(part, where[lo:]) if len(ids) > self.max_length)
                raise ValueError(f"{bad}: {longest} tokens exceed --max_length {self.max_length}")
            width = bucket(longest)
            ids = np.zeros((self.max_batch_size, width), np.int32)
            mask = np.zeros_like(ids)
            for row, (seq, _) in enumerate(part):  # right padding
                ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
            logp, hit = (np.asarray(x) for x in _token_scores_jit(self.graphdef, self.params, ids, mask))
            for row, (seq, start) in enumerate(part):
                span = slice(max(start, 1) - 1, len(seq) - 1)  # predictions of tokens start..end
                out.append((float(logp[row, span].sum()), span.stop - span.start, int(hit[row, span].sum())))
        return out


# ---------------------------------------------------------------------------------------------------
# Answer extraction (GSM8K style)
# ---------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _normalize(text: str) -> str:
    """Lower-case, collapse spaces, strip surrounding punctuation; numbers lose `,` `$` and `.0`."""
    text = " ".join(text.lower().split()).strip(string.punctuation.replace("-", "").replace("$", "") + " ")
    if _NUMBER.fullmatch(text):
        text = text.replace(",", "").replace("$", "")
        value = float(text)
        return str(int(value)) if value.is_integer() else str(value)
    return text


def extract_answer(text: str) -> str:
    """The answer in a response: the text after the last `####`, else the last number, else all of it."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return _normalize(tail.splitlines()[0] if tail else "")
    numbers = _NUMBER.findall(text)
    if numbers:
        return _normalize(numbers[-1])
    return _normalize(text)


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`exact_match` and `contains` rates of responses against reference answers (see the module doc)."""
    exact = contains = 0
    for pred, ref in zip(predictions, references, strict=True):
        gold = extract_answer(ref)
        exact += extract_answer(pred) == gold
        contains += bool(gold) and gold in _normalize(pred)
    n = max(len(references), 1)
    return {"exact_match": exact / n, "contains": contains / n}


# ---------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------


def task_kind(row: dict[str, Any], where: str) -> str:
    """`multiple_choice`, `generation` or `loss`, from a row's fields."""
    if "choices" in row:
        return "multiple_choice"
    if "answer" in row:
        return "generation"
    if "text" in row or "messages" in row or "query" in row:
        return "loss"
    raise ValueError(
        f"{where}: cannot tell the task kind from fields {sorted(row)}; expected 'choices' (multiple choice), "
        "'answer' (generation) or 'messages'/'text' (loss)"
    )


def _require(row: dict, fields: Sequence[str], where: str, kind: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"{where}: {kind} row lacks field(s) {missing}; found {sorted(row)}")


def _choice_index(row: dict, where: str) -> int:
    choices, answer = row["choices"], row["answer"]
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        letter = answer.strip().upper()
        if len(letter) == 1 and 0 <= ord(letter) - ord("A") < len(choices):
            return ord(letter) - ord("A")
    raise ValueError(f"{where}: answer {answer!r} is not a choice index, letter or choice text of {choices}")


def eval_multiple_choice(scorer: Scorer, tokenizer, rows, name: str, template: str) -> dict[str, float]:
    """`acc` and `acc_norm` of picking the choice with the highest (per-character) log-likelihood."""
    sequences, where, owners, gold = [], [], [], []
    for i, row in enumerate(rows):
        w = f"{name} row {i}"
        _require(row, ("question", "choices", "answer"), w, "multiple-choice")
        gold.append(_choice_index(row, w))
        context = tokenizer.encode(template.format(**row))
        for c, choice in enumerate(row["choices"]):
            full = tokenizer.encode(template.format(**row) + " " + str(choice))
            sequences.append((full, len(context)))
            where.append(w)
            owners.append((i, c, len(str(choice)) + 1))
    scores = scorer.score(sequences, where)
    best = {}
    for (i, c, chars), (logp, _, _) in zip(owners, scores):
        for key, value in (("acc", logp), ("acc_norm", logp / chars)):
            if (i, key) not in best or value > best[(i, key)][0]:
                best[(i, key)] = (value, c)
    n = len(rows)
    return {key: sum(best[(i, key)][1] == gold[i] for i in range(n)) / n for key in ("acc", "acc_norm")}


def eval_loss(scorer: Scorer, tokenizer, rows, name: str, encoder, args: EvalArgs) -> dict[str, float]:
    """Mean next-token NLL over the scored tokens (the last assistant turn, rendered as training renders it),
    its perplexity and the argmax token accuracy."""
    sequences, where = [], []
    for i, row in enumerate(rows):
        w = f"{name} row {i}"
        if "text" in row:
            sequences.append((tokenizer.encode(row["text"]), 1))
        else:
            prompt = prompt_of(row, where=w, columns=args.columns)
            if prompt.reference is None:
                raise ValueError(f"{w}: a loss row needs a final assistant message (or 'response') to score")
            messages = prompt.messages + [{"role": "assistant", "content": prompt.reference}]
            encoded = encoder.encode({"messages": messages, "tools": prompt.tools,
                                      "chat_template_kwargs": prompt.chat_template_kwargs})
            trained = encoded.labels != IGNORE
            starts = np.flatnonzero(trained & ~np.concatenate([[False], trained[:-1]]))  # where trained runs begin
            if not len(starts):
                raise ValueError(f"{w}: the template trains no token of the last assistant turn")
            sequences.append((encoded.input_ids.tolist(), int(starts[-1])))
        where.append(w)
    scores = scorer.score(sequences, where)
    total = sum(s[0] for s in scores)
    count = sum(s[1] for s in scores)
    loss = -total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_acc": sum(s[2] for s in scores) / max(count, 1)}


def eval_generation(gen: Generator, rows, name: str, args: EvalArgs, encoder, vision=None) -> tuple[dict[str, float], list[str]]:
    """Greedy responses to each row and their exact-match / contains rates against `answer`; `vision`
    (`data.vision.VisionData`): the model reads the rows' images / videos."""
    prompts = []
    for i, row in enumerate(rows):
        w = f"{name} row {i}"
        _require(row, ("answer",), w, "generation")
        chat = {k: v for k, v in row.items() if k != "answer"}  # `answer` is the reference, not a response alias
        if "question" in chat and "query" not in chat:
            chat["query"] = chat.pop("question")
        prompt = prompt_of(chat, where=w, columns=args.columns, media=vision is not None)
        media = row_media(chat, w, base=os.path.dirname(os.path.abspath(name))) if vision else None
        prompts.append(prompt_inputs(vision, encoder, prompt.messages, prompt.tools, media, w, prompt.chat_template_kwargs))
    config = args.generation_config(gen, encoder)
    responses = [o.text for o in gen.generate_ids(prompts, config)]
    return generation_metrics(responses, [str(r["answer"]) for r in rows]), responses


def evaluate(model: nnx.Module, tokenizer, args: EvalArgs) -> dict[str, dict[str, Any]]:
    """Metrics of every task file in `args.eval_dataset`: `{task name: {"kind", "n", metric: value}}`."""
    scorer = Scorer(model, max_batch_size=args.max_batch_size, max_length=args.max_length)
    gen = args.generator(model, tokenizer, max_batch_size=args.max_batch_size)
    vision, args = vision_for_inference(args, model.config)
    encoder = args.trained_encoder(tokenizer, *args.trained_run())
    results = {}
    for path in args.eval_dataset:
        rows = read_rows(path, args.eval_limit, LoadOptions.of(args, shuffle=False))
        if not rows:
            raise ValueError(f"{path}: no rows to evaluate")
        name = os.path.basename(path)
        kind = task_kind(rows[0], f"{path} row 0")
        if kind == "multiple_choice":
            metrics = eval_multiple_choice(scorer, tokenizer, rows, path, args.mc_template)
        elif kind == "generation":
            metrics, _ = eval_generation(gen, rows, path, args, encoder, vision)
        else:
            metrics = eval_loss(scorer, tokenizer, rows, path, encoder, args)
        results[name] = {"kind": kind, "n": len(rows), **metrics}
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one line per (task, metric)."""
    lines = [f"{'task':<28} {'kind':<16} {'n':>6}  {'metric':<12} {'value':>10}"]
    for name, res in results.items():
        for key, value in res.items():
            if key not in ("kind", "n"):
                lines.append(f"{name:<28} {res['kind']:<16} {res['n']:>6}  {key:<12} {value:>10.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_config(EvalArgs, argv, aliases=ALIASES, command="eval")
    if not args.eval_dataset:
        raise ValueError("--eval_dataset is required: one or more task files (see python -m swift_jax.eval --help)")
    model, tokenizer = load_for_inference(args.model, args.adapters, args.dtype, args.adjust_config(), args.new_special_tokens)
    results = evaluate(model, tokenizer, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.result_path)), exist_ok=True)
    with open(args.result_path, "w") as f:
        json.dump({"model": args.model, "adapters": args.adapters, "results": results}, f, indent=2)
    print(format_table(results))
    print(f"[INFO] results written to {args.result_path}")
    return results


if __name__ == "__main__":
    main()
