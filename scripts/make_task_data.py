"""Write the bundled tiny datasets of the task types (swift_jax/assets/tasks/), ms-swift's row formats.

    python scripts/make_task_data.py

Words of 2-6 letters from a 12-letter alphabet, as user messages:
- seq_cls.jsonl: `label` 0/1/2 = the instruction word (upper / reverse / sort), single-label;
- seq_cls_multi.jsonl: `label` = the classes of the letter groups present (a-d: 0, e-h: 1, i-l: 2), multi-label;
- seq_cls_regression.jsonl: `label` = the number of letters / 4, regression;
- embedding.jsonl: `messages` a word, `positive_messages` its letters reversed, `negative_messages` two other
  words (ms-swift's embedding rows, for --loss_type infonce);
- reranker.jsonl: a word of a-f as the query (user) and documents (assistant turns): the same word, and three
  words of g-l.
"""

from __future__ import annotations

import json
import os
import random

OUT = os.path.join(os.path.dirname(__file__), "..", "swift_jax", "assets", "tasks")
LETTERS = "abcdefghijkl"
TASKS = ("upper", "reverse", "sort")


def word(rng: random.Random) -> list[str]:
    return rng.sample(LETTERS, rng.randint(2, 6))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write(name: str, rows: list[dict]) -> None:
    with open(os.path.join(OUT, name), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for _ in range(240):
        label = rng.randrange(3)
        rows.append({"messages": user(f"{TASKS[label]}: {' '.join(word(rng))}"), "label": label})
    write("seq_cls.jsonl", rows)
    rows = []
    for _ in range(240):
        w = word(rng)
        rows.append({"messages": user(" ".join(w)), "label": sorted({LETTERS.index(c) // 4 for c in w})})
    write("seq_cls_multi.jsonl", rows)
    rows = []
    for _ in range(240):
        w = word(rng)
        rows.append({"messages": user(" ".join(w)), "label": len(w) / 4})
    write("seq_cls_regression.jsonl", rows)
    rows = []
    for _ in range(240):
        w = word(rng)
        rows.append({"messages": user(" ".join(w)), "positive_messages": [user(" ".join(reversed(w)))],
                     "negative_messages": [user(" ".join(word(rng))) for _ in range(2)]})
    write("embedding.jsonl", rows)
    rows = []
    for _ in range(240):
        w = rng.sample(LETTERS[:6], rng.randint(2, 5))
        doc = lambda letters: [{"role": "assistant", "content": " ".join(letters)}]
        rows.append({"messages": user(" ".join(w)), "positive_messages": [doc(w)],
                     "negative_messages": [doc(rng.sample(LETTERS[6:], rng.randint(2, 5))) for _ in range(3)]})
    write("reranker.jsonl", rows)


if __name__ == "__main__":
    main()
