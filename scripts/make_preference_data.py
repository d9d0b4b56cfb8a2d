"""Build the bundled preference data in swift_jax/assets/preference/ from the quickstart task (output committed).

Each quickstart row (`reverse: n b i y` -> `= y i b n`, `upper: c d p w` -> `= C D P W`) becomes a preference
pair whose rejected answer is the plausible mistake of not doing the task (copying the letters unchanged):

- train.jsonl / val.jsonl: ms-swift's `messages` + `rejected_response` (DPO, ORPO, CPO, SimPO, RM);
- kto.jsonl: `messages` + `label`, alternately the right answer (true) and the mistake (false).

    python scripts/make_preference_data.py
"""

from __future__ import annotations

import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "swift_jax", "assets")
SIZES = {"train.jsonl": ("train.jsonl", 512), "val.jsonl": ("val.jsonl", 64)}


def mistake(prompt: str) -> str:
    """The answer that ignores the instruction: the spelled-out word copied as it is."""
    return "= " + prompt.split(": ", 1)[1]


def main() -> None:
    out = os.path.join(ROOT, "preference")
    os.makedirs(out, exist_ok=True)
    for name, (source, count) in SIZES.items():
        with open(os.path.join(ROOT, "quickstart", source)) as f:
            rows = [json.loads(line) for _, line in zip(range(count), f)]
        with open(os.path.join(out, name), "w") as f:
            for row in rows:
                f.write(json.dumps({**row, "rejected_response": mistake(row["messages"][0]["content"])}) + "\n")
        if name == "train.jsonl":
            with open(os.path.join(out, "kto.jsonl"), "w") as f:
                for i, row in enumerate(rows):
                    messages = row["messages"]
                    if i % 2:
                        messages = [messages[0], {"role": "assistant", "content": mistake(messages[0]["content"])}]
                    f.write(json.dumps({"messages": messages, "label": i % 2 == 0}) + "\n")


if __name__ == "__main__":
    main()
