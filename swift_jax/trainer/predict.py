"""Greedy answers to held-out rows after training (`--num_predict_samples`)."""

from __future__ import annotations

import os

from flax import nnx


def predict_held_out(model: nnx.Module, tokenizer, path: str, n: int, max_new_tokens: int, say) -> float | None:
    """Greedy answers to the first `n` rows of `path` (rows whose last message is the reference answer);
    prints a few pairs and returns the exact-match rate (the response equals the reference exactly)."""
    from swift_jax.generation import GenerationConfig, Generator
    from swift_jax.infer import encode_chat, read_rows, row_messages

    if not os.path.isfile(path):
        say(f"predict: {path} is not a local file; skipped")
        return None
    prompts, references = [], []
    for i, row in enumerate(read_rows(path, limit=n)):
        messages, reference = row_messages(row, where=f"{path} row {i}")
        if reference is not None:
            prompts.append((messages[-1]["content"], encode_chat(tokenizer, messages)))
            references.append(reference)
    if not prompts:
        say(f"predict: no rows of {path} end with an assistant answer; skipped")
        return None
    outputs = Generator(model, tokenizer).generate_ids([ids for _, ids in prompts], GenerationConfig(max_new_tokens=max_new_tokens))
    hits = [o.text.strip() == r.strip() for o, r in zip(outputs, references)]
    for (question, _), out, ref, hit in list(zip(prompts, outputs, references, hits))[:5]:
        say(f"  {question!r} -> {out.text.strip()!r} (reference {ref!r}{'' if hit else ', wrong'})")
    rate = sum(hits) / len(hits)
    say(f"held-out exact match: {rate:.4f} ({sum(hits)}/{len(hits)} greedy answers)")
    return rate
