"""Build the bundled quickstart assets in swift_jax/assets/quickstart/ (run once; the output is committed).

- config.json: a tiny Qwen2-architecture model (about 1M parameters) sized to the bundled tokenizer;
- tokenizer files: copied from swift_jax/assets/tokenizer/ so the folder is a complete HF model folder
  (minus weights: the quickstart trains from scratch);
- train.jsonl / val.jsonl: string-transformation tasks in ms-swift's `messages` format that such a model
  learns in a few minutes on a CPU (reverse a spelled-out word, upper-case it), with disjoint held-out words.

    python scripts/make_quickstart.py
"""

from __future__ import annotations

import json
import os
import random
import shutil

ROOT = os.path.join(os.path.dirname(__file__), "..", "swift_jax", "assets")
OUT = os.path.join(ROOT, "quickstart")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# Words are 4 letters, space-separated, so every letter is one token of the byte-level BPE: the tasks are
# token-level copies at fixed relative offsets (reverse order; capitals), learnable by a ~1M model in minutes.
# Answers start with "= " so that their letters are the same tokens as the prompt's (" x", not "x").
TASKS = {
    "reverse": lambda w: "= " + " ".join(reversed(w.split())),
    "upper": lambda w: "= " + w.upper(),
}


def make_rows(words: list[str], rng: random.Random) -> list[dict]:
    rows = []
    for word in words:
        task = rng.choice(sorted(TASKS))
        rows.append({"messages": [{"role": "user", "content": f"{task}: {word}"}, {"role": "assistant", "content": TASKS[task](word)}]})
    return rows


def main() -> None:
    import transformers

    os.makedirs(OUT, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = os.path.join(ROOT, "tokenizer", name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(OUT, name))
    tokenizer = transformers.AutoTokenizer.from_pretrained(OUT)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,  # Qwen2's default 1e6 rotates too slowly to resolve short relative offsets
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config.save_pretrained(OUT)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({" ".join(rng.choice(letters) for _ in range(4)) for _ in range(6000)})
    rng.shuffle(words)
    val, train = words[:200], words[200:]
    for name, split in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(OUT, name), "w") as f:
            for row in make_rows(split, rng):
                f.write(json.dumps(row) + "\n")
    print(f"wrote {OUT}: vocab {len(tokenizer)}, {len(train)} train rows, {len(val)} held-out rows")


if __name__ == "__main__":
    main()
