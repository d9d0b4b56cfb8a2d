"""A tiny chat model folder (random weights + a byte-level BPE tokenizer with a ChatML template), offline.

Used by the generation, inference and evaluation tests; the folder loads with `swift_jax.load_model`
and `swift_jax.load_tokenizer` like any Hugging Face checkpoint.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tiny_models import build_hf_model, save_hf_model

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The answer is 42. What is 6 times 7? It is 42.",
    "Question: what color is the sky? Answer: blue. #### 7",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "one two three four five six seven eight nine ten 1 2 3 4 5 6 7 8 9 0",
]


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, with ChatML special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    return fast


def build_chat_model(path: str, model_type: str = "qwen2", seed: int = 0, **overrides) -> str:
    """Write a tiny random `model_type` checkpoint (config `overrides` on tiny_models' sizes) plus the
    tokenizer into `path`; returns the path."""
    tok = build_tokenizer()
    hf = build_hf_model(model_type, seed=seed, vocab_size=len(tok), eos_token_id=tok.eos_token_id, **overrides)
    save_hf_model(hf, path)
    tok.save_pretrained(path)
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    return str(path)
