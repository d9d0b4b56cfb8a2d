"""Record an ms-swift cached dataset for tests/test_cached_dataset.py: the first 40 quickstart rows as
tests/golden/ms_swift_cached_dataset/rows.jsonl, and ms-swift 4.6's `swift export --to_cached_dataset true` of them
(chatml template, the quickstart tokenizer, `--dataset_shuffle false` so that it keeps the file order) as tests/golden/ms_swift_cached_dataset/train.

Runs only in ms-swift's own venv (CI never installs it):

    /work/msswift-venv/bin/python scripts/record_ms_swift_cached_dataset.py
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
OUT = os.path.join(ROOT, "tests", "golden", "ms_swift_cached_dataset")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rows = os.path.join(OUT, "rows.jsonl")
    with open(os.path.join(QUICK, "train.jsonl")) as f, open(rows, "w") as out:
        out.writelines(f.readlines()[:40])
    with tempfile.TemporaryDirectory() as tmp:
        cached = os.path.join(tmp, "cached")
        swift = os.path.join(os.path.dirname(sys.executable), "swift")
        subprocess.run([swift, "export", "--model", QUICK, "--model_type", "qwen2", "--template", "chatml",
                        "--to_cached_dataset", "true", "--dataset", rows, "--dataset_shuffle", "false", "--max_length", "64",
                        "--output_dir", cached],
                       check=True, cwd=tmp)
        shutil.rmtree(os.path.join(OUT, "train"), ignore_errors=True)
        shutil.copytree(os.path.join(cached, "train"), os.path.join(OUT, "train"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
