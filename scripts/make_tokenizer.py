"""Build the bundled byte-level BPE tokenizer in swift_jax/assets/tokenizer/ (run once; the output is committed).

A small tokenizer (vocab about 1000) trained offline with `tokenizers` on a built-in corpus, saved in
Hugging Face format with a ChatML chat template, so the quickstart and the tests need no hub download:
eos `<|im_end|>`, pad `<|endoftext|>`, special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`.
Byte-level means every string encodes (no unknown token), whatever the corpus covered.

    python scripts/make_tokenizer.py [--out DIR] [--vocab_size 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import string

OUT = os.path.join(os.path.dirname(__file__), "..", "swift_jax", "assets", "tokenizer")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen2.5 writes it (without the tool-calling branches): every turn is
# `<|im_start|>{role}\n{content}<|im_end|>\n`; the generation prompt opens an assistant turn.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the tokens before it.
Fine-tuning adapts a pretrained model to a task with a small learning rate and a few thousand examples.
You are a helpful assistant. Answer the question briefly and correctly. If you do not know, say so.
The user asks a question and the assistant answers it. The system message sets the behaviour of the assistant.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Translate the following sentence into French. Summarize the text below in one sentence. Write a short poem.
reverse: hello -> olleh. upper: world -> WORLD. reverse: token -> nekot. upper: model -> MODEL.
Training runs on TPUs and GPUs with JAX. The loss goes down, the accuracy goes up, and the checkpoint is saved.
def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)\n
import numpy as np\nx = np.zeros((4, 8), dtype=np.int32)\nif x.sum() == 0:\n    print("empty")\n
Instruction: Give three tips for staying healthy. Output: Eat well, sleep enough and exercise every day.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July August
one two three four five six seven eight nine ten hundred thousand million first second third last next
"""


def corpus_lines() -> list[str]:
    """The training corpus: the text above plus every letter, digit and short letter pair, so that
    words of any spelling split into a few tokens."""
    lines = CORPUS.splitlines()
    letters = string.ascii_lowercase
    lines += [" ".join(a + b for b in letters) for a in letters]
    lines += [" ".join((a + b).upper() for b in letters) for a in letters]
    lines += [string.ascii_letters, string.digits, string.punctuation, " ".join(str(i) for i in range(1000))]
    return lines * 4


def build(vocab_size: int = 1000):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `corpus_lines()`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    return tokenizer


def portable_config(path: str) -> None:
    """Rewrite tokenizer_config.json in the form both transformers 4.x and 5.x load (5.x writes a
    `TokenizersBackend` class and an `extra_special_tokens` list that 4.x does not understand)."""
    with open(path) as f:
        config = json.load(f)
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens", SPECIAL_TOKENS[1:])
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--vocab_size", type=int, default=1000)
    args = parser.parse_args()

    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=build(args.vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHATML_TEMPLATE
    os.makedirs(args.out, exist_ok=True)
    hf.save_pretrained(args.out)
    portable_config(os.path.join(args.out, "tokenizer_config.json"))
    print(f"wrote {os.path.abspath(args.out)}: vocab {len(hf)}, files {sorted(os.listdir(args.out))}")


if __name__ == "__main__":
    main()
