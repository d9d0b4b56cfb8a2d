"""`swift-jax deploy` under concurrent `openai` clients on loopback: how long N simultaneous requests take.

    python scripts/bench_serve.py [--levels 1 4 16 64] [--max_tokens 32] [--baseline_tree /work/main]

Builds the quickstart tiny Qwen2 (random weights, its tokenizer), starts `python -m swift_jax.deploy` as a
subprocess, and for each concurrency level N sends N chat requests at once from N threads (each its own
`openai.OpenAI` client, greedy, `max_tokens` tokens, `ignore_eos` so every response has that length), after a
warm-up round of every level (it compiles each batch shape). Prints a markdown table: wall time of the level,
its ratio to one request's time, the mean / max latency and the mean tokens per response (a server without
`ignore_eos` may stop early). `--baseline_tree DIR` runs the same levels first against the deploy of another
checkout (PYTHONPATH=DIR, e.g. the commit before the engine), so both columns come from one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "swift_jax", "assets", "quickstart")


def build(path: str) -> None:
    """A random-weight checkpoint of the quickstart config, with its tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(QUICKSTART)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(QUICKSTART, name), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tree: str, model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """The deploy of checkout `tree` on a free port; returns once /v1/models answers."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": tree, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    cmd = [sys.executable, "-m", "swift_jax.deploy", "--model", model, "--port", str(port), "--max_new_tokens", "512", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not come up in 300 s")


def one(url: str, i: int, max_tokens: int) -> tuple[float, int]:
    import openai

    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=600)
    start_time = time.perf_counter()
    reply = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": f"Question {i}: count."}],
        max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].message.content is not None
    return time.perf_counter() - start_time, reply.usage.completion_tokens


def level(url: str, n: int, max_tokens: int) -> tuple[float, float, float, float]:
    """Wall time of n simultaneous requests, their mean and max latency, and the mean tokens per response."""
    with ThreadPoolExecutor(n) as pool:
        start_time = time.perf_counter()
        results = list(pool.map(lambda i: one(url, i, max_tokens), range(n)))
        wall = time.perf_counter() - start_time
    latencies = [r[0] for r in results]
    return wall, sum(latencies) / n, max(latencies), sum(r[1] for r in results) / n


def bench(tree: str, model: str, levels: list[int], max_tokens: int, extra: list[str]) -> dict[int, tuple]:
    proc, url = start(tree, model, ["--served_model_name", "bench", *extra])
    try:
        for n in [1, *levels]:  # compile every batch shape the levels reach
            level(url, n, max_tokens)
        return {n: level(url, n, max_tokens) for n in [1, *levels]}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--max_num_seqs", type=int, default=64)
    p.add_argument("--baseline_tree", default=None, help="another checkout whose deploy runs first (e.g. /work/main)")
    a = p.parse_args()
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        runs = {}
        if a.baseline_tree:
            runs["baseline"] = bench(os.path.abspath(a.baseline_tree), tmp, a.levels, a.max_tokens, [])
        runs["engine"] = bench(here, tmp, a.levels, a.max_tokens, ["--max_num_seqs", str(a.max_num_seqs), "--max_model_len", "256"])
    print(f"\n{a.max_tokens} tokens per request, greedy; wall = all N answered; x1 = wall / one request alone\n")
    names = list(runs)
    print("| concurrency | " + " | ".join(f"{n} wall s | {n} x1 | {n} mean / max latency s | {n} tokens" for n in names) + " |")
    print("|---|" + "---|---|---|---|" * len(names))
    for n in a.levels:
        cells = []
        for name in names:
            wall, mean, worst, tokens = runs[name][n]
            cells += [f"{wall:.2f}", f"{wall / runs[name][1][0]:.1f}x", f"{mean:.2f} / {worst:.2f}", f"{tokens:.0f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
