"""Build the bundled multimodal demo data in swift_jax/assets/vl_demo/ (run once; the output is committed).

Small flat-colour PNGs (32x32 and 32x48, a few hundred bytes each) and ms-swift rows that ask for their
colour: one image per row (with and without an explicit `<image>` tag), two images in one row, and a
video given as a list of frames. A tiny Qwen2-VL learns to name the colour in a few CPU steps.

    python scripts/make_vl_demo.py
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "swift_jax", "assets", "vl_demo")
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30)}


def image(color, size, seed) -> Image.Image:
    rs = np.random.RandomState(seed)
    pixels = np.clip(np.asarray(color)[None, None] + rs.randint(-12, 12, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def main() -> None:
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    files = {}
    for i, (name, color) in enumerate(COLORS.items()):
        for j, size in enumerate([(32, 32), (32, 48)]):
            path = f"images/{name}_{j}.png"
            image(color, size, 10 * i + j).save(os.path.join(OUT, path), optimize=True)
            files.setdefault(name, []).append(path)
    rng = random.Random(0)
    rows = []
    for name, paths in files.items():
        for path in paths:
            rows.append({"messages": [{"role": "user", "content": "<image>What colour is this?"},
                                      {"role": "assistant", "content": name}], "images": [path]})
            rows.append({"messages": [{"role": "user", "content": "Name the colour."},
                                      {"role": "assistant", "content": name}], "images": [path]})
    names = sorted(files)
    for _ in range(4):
        a, b = rng.choice(names), rng.choice(names)
        rows.append({"messages": [{"role": "user", "content": "<image> and <image>: same colour?"},
                                  {"role": "assistant", "content": "yes" if a == b else "no"}],
                     "images": [files[a][0], files[b][0]]})
    for name in names[:2]:
        rows.append({"messages": [{"role": "user", "content": "<video>What colour is the video?"},
                                  {"role": "assistant", "content": name}], "videos": [[files[name][0]] * 2]})
    with open(os.path.join(OUT, "train.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
