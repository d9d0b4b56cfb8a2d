"""Greedy decode throughput of swift_jax's Generator vs `transformers.generate`, same model, one run.

    python scripts/bench_generate.py [--hidden 512 --layers 8 --vocab 32000] [--batches 1 16] [--new_tokens 128]

Builds a random float32 Llama-architecture checkpoint, then for each batch size times `--new_tokens`
greedy tokens (prompt of `--prompt_len` tokens) with both, after a warm-up call that compiles (JAX) or
warms caches (torch). Prints a markdown table: generated tokens/s (batch x new tokens / seconds, prefill
included) and the ratio swift_jax / transformers. EOS is disabled so both generate exactly the same count.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np


def build(path: str, hidden: int, layers: int, vocab: int) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 256, 1),
        max_position_embeddings=4096,
    )
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def time_swift(path: str, prompts: list[list[int]], new_tokens: int) -> float:
    import swift_jax
    from swift_jax.generation import GenerationConfig, Generator

    gen = Generator(swift_jax.load_model(path), max_batch_size=len(prompts))
    cfg = GenerationConfig(max_new_tokens=new_tokens, eos_token_ids=())
    gen.generate_ids(prompts, cfg)  # compile
    start = time.perf_counter()
    outs = gen.generate_ids(prompts, cfg)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == new_tokens for o in outs)
    return elapsed


def time_transformers(path: str, prompts: list[list[int]], new_tokens: int) -> float:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)

    def run():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    run()  # warm-up
    start = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=128)
    args = parser.parse_args()
    path = tempfile.mkdtemp()
    build(path, args.hidden, args.layers, args.vocab)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; jax {jax.__version__}")
    print(f"model: llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} fp32; "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy\n")
    print("| batch | swift_jax tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|")
    rng = np.random.RandomState(0)
    for batch in args.batches:
        prompts = rng.randint(1, args.vocab, (batch, args.prompt_len)).tolist()
        ours = batch * args.new_tokens / time_swift(path, prompts, args.new_tokens)
        ref = batch * args.new_tokens / time_transformers(path, prompts, args.new_tokens)
        print(f"| {batch} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} |", flush=True)


if __name__ == "__main__":
    main()
