"""ms-swift's `--new_special_tokens`: tokens added to the tokenizer, and the embedding (and untied LM head) grown
to a multiple of 128 rows when the vocabulary no longer fits, new rows at the mean of the old ones (transformers'
`resize_token_embeddings` with its default mean resizing)."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx


def expand_tokens(tokens: list[str]) -> list[str]:
    """The tokens of `--new_special_tokens`: each value a token, or a .txt file of whitespace-separated tokens."""
    out = []
    for token in tokens:
        if token.endswith(".txt"):
            if not os.path.isfile(token):
                raise FileNotFoundError(f"--new_special_tokens {token}: no such file")
            with open(token, encoding="utf-8") as f:
                out += f.read().split()
        else:
            out.append(token)
    return out


def add_new_special_tokens(model: nnx.Module, tokenizer, tokens: list[str], mesh=None) -> int:
    """Add `tokens` to `tokenizer` as special tokens and grow `model`'s vocabulary to hold them (ms-swift's
    `_add_new_special_tokens`); returns the number of tokens added."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": expand_tokens(tokens)}) if tokens else 0
    fit_vocab(model, len(tokenizer), mesh)
    return added


def adapter_tokenizer_dir(adapters=()) -> str | None:
    """The first adapter checkpoint that holds its own tokenizer (saved there when training added tokens)."""
    return next((a for a in adapters if os.path.exists(os.path.join(a, "tokenizer_config.json"))), None)


def checkpoint_tokenizer(model_path: str, adapters=()):
    """The tokenizer of an inference or export run: the first adapter checkpoint's own, else the model's."""
    from swift_jax.modeling import load_tokenizer

    return load_tokenizer(adapter_tokenizer_dir(adapters) or model_path)


def fit_vocab(model: nnx.Module, tokenizer_size: int, mesh=None) -> None:
    """Grow the model's vocabulary to ceil(tokenizer_size / 128) x 128 rows when it has fewer than
    `tokenizer_size` (a tokenizer saved with added tokens, e.g. in a checkpoint)."""
    if model.config.vocab_size < tokenizer_size:
        resize_token_embeddings(model, math.ceil(tokenizer_size / 128) * 128, mesh)


def resize_token_embeddings(model: nnx.Module, vocab_size: int, mesh=None) -> None:
    """Grow the input embedding `[vocab, embed]` (and an untied `lm_head` `[embed, vocab]`) to `vocab_size`, new
    entries the mean of the existing ones, and record the size in the model's config (saved with it)."""
    import json

    from swift_jax.modeling import _placement

    if not hasattr(getattr(model, "model", None), "embed_tokens"):
        raise ValueError(f"--new_special_tokens: growing the vocabulary of {model.config.model_type} is not supported")

    def grow(module: nnx.Module, name: str, axis: int) -> None:  # [vocab, embed] or [embed, vocab]
        var = getattr(module, name)
        old = var[...]
        mean = jnp.mean(old.astype(jnp.float32), axis=axis, keepdims=True).astype(old.dtype)
        grown = jnp.concatenate([old, jnp.repeat(mean, vocab_size - old.shape[axis], axis=axis)], axis=axis)
        setattr(module, name, var.replace(jax.device_put(grown, _placement(var.logical_axes, grown.shape, mesh))))

    grow(model.model.embed_tokens, "embedding", 0)
    if getattr(model, "lm_head", None) is not None:
        grow(model.lm_head, "kernel", 1)
        model.lm_head.out_features = vocab_size
    hf = {**model.config.hf_config, "vocab_size": vocab_size}
    model.config = model.config.replace(vocab_size=vocab_size, hf_config_json=json.dumps(hf, sort_keys=True, default=str))
    model.model.cfg = model.config
