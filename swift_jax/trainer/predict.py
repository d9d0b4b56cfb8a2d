"""Greedy answers to held-out rows after training (`--num_predict_samples`)."""

from __future__ import annotations

from flax import nnx


def predict_held_out(model: nnx.Module, tokenizer, data_args, path: str, n: int, max_new_tokens: int, say) -> float | None:
    """Greedy answers to the first `n` rows of the dataset entry `path` (rows whose last message is the reference answer),
    prompted exactly as training encoded them (the run's template, system, agent template and columns);
    prints a few pairs and returns the exact-match rate (the response equals the reference exactly)."""
    from swift_jax.arguments import GenerationArgs
    from swift_jax.data.errors import DataError
    from swift_jax.data.frontend import prompt_of, read_rows
    from swift_jax.data.resolve import LoadOptions
    from swift_jax.generation import Generator

    try:
        rows = read_rows(path, limit=n, options=LoadOptions.of(data_args, shuffle=False))
    except DataError as e:
        say(f"predict: {path} could not be read ({e}); skipped")
        return None
    encoder = data_args.chat_encoder(tokenizer)
    prompts, references = [], []
    for i, row in enumerate(rows):
        prompt = prompt_of(row, where=f"{path} row {i}", columns=data_args.columns)
        if prompt.reference is not None:
            ids = encoder.prompt_ids(prompt.messages, prompt.tools, prompt.chat_template_kwargs)
            prompts.append((prompt.messages[-1]["content"], ids))
            references.append(prompt.reference)
    if not prompts:
        say(f"predict: no rows of {path} end with an assistant answer; skipped")
        return None
    gen = Generator(model, tokenizer)
    config = GenerationArgs(max_new_tokens=max_new_tokens).generation_config(gen, encoder)  # greedy; template stops
    outputs = gen.generate_ids([ids for _, ids in prompts], config)
    hits = [o.text.strip() == r.strip() for o, r in zip(outputs, references)]
    for (question, _), out, ref, hit in list(zip(prompts, outputs, references, hits))[:5]:
        say(f"  {question!r} -> {out.text.strip()!r} (reference {ref!r}{'' if hit else ', wrong'})")
    rate = sum(hits) / len(hits)
    say(f"held-out exact match: {rate:.4f} ({sum(hits)}/{len(hits)} greedy answers)")
    return rate
