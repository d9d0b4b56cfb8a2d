"""Load time and peak RSS of `swift_jax.load_model` vs `transformers.from_pretrained` on one checkpoint.

    python scripts/bench_load.py --size_mb 1200 [--devices 8]

Writes a random Qwen2-architecture checkpoint of about `--size_mb` MB (float32, sharded safetensors), then
loads it in fresh subprocesses and prints a table: seconds, peak RSS growth, growth / checkpoint size,
and each ratio against transformers measured in the same run. Rows: the sharded load over `--devices`
fake CPU devices, the one-device load followed by a first jitted forward (compilation included), the
same for transformers, and transformers' load alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

LOADERS = {
    "swift_jax (streamed, sharded)": """
        import swift_jax
        from swift_jax.parallel import make_mesh
        mesh = make_mesh(fsdp_size=-1)
        swift_jax.load_model(WARMUP, mesh=mesh)
        before = rss(); t0 = time.perf_counter()
        model = swift_jax.load_model(PATH, mesh=mesh)
        jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    """,
    "swift_jax one device + forward": """
        import jax.numpy as jnp
        import swift_jax
        def forward(model):  # as generation and eval run it: jit over (graphdef, state), no state output
            graphdef, state = nnx.split(model)
            return jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))(state, jnp.ones((1, 16), jnp.int32))
        forward(swift_jax.load_model(WARMUP)).block_until_ready()
        before = rss(); t0 = time.perf_counter()
        forward(swift_jax.load_model(PATH)).block_until_ready()  # its compilation included
    """,
    "transformers + forward": """
        import torch, transformers
        transformers.AutoModelForCausalLM.from_pretrained(WARMUP, dtype=torch.float32)(torch.ones(1, 16, dtype=torch.long))
        before = rss(); t0 = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(PATH, dtype=torch.float32)
        with torch.no_grad():
            model(torch.ones(1, 16, dtype=torch.long))
    """,
    "transformers.from_pretrained": """
        import torch, transformers
        transformers.AutoModelForCausalLM.from_pretrained(WARMUP, dtype=torch.float32)
        before = rss(); t0 = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(PATH, dtype=torch.float32)
        sum(float(p.sum()) for p in model.parameters())  # weights may be lazily mmapped: touch them
    """,
}

PRELUDE = """
import os, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
import jax
from flax import nnx
PATH = {path!r}
WARMUP = {path!r} + "/warmup"  # loaded first, so imports and runtime set-up are not measured
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field))
    return int(line.split()[1]) * 1024
def rss():  # current resident set
    return status("VmRSS")
def peak():  # VmHWM: ru_maxrss would inherit the parent's peak across exec
    return status("VmHWM")
"""


def make_checkpoint(path: str, size_mb: int) -> int:
    """A random float32 Qwen2 checkpoint of about size_mb MB in `path`, and a tiny one in path/warmup."""
    import torch
    import transformers

    hidden = 1024
    layers = max(1, int(size_mb * 1e6 / 4 / (hidden * hidden * 4 + 3 * hidden * 2816)) - 2)
    big = dict(vocab_size=32000, hidden_size=hidden, intermediate_size=2816, num_hidden_layers=layers)
    tiny = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    for folder, size in ((path, big), (os.path.join(path, "warmup"), tiny)):
        config = transformers.Qwen2Config(num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False, **size)
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, max_shard_size="500MB")
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def measure(body: str, path: str, devices: int) -> tuple[float, int]:
    script = PRELUDE.format(path=path, devices=devices) + textwrap.dedent(body) + (
        "\nprint(time.perf_counter() - t0, peak() - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    seconds, growth = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_mb", type=int, default=1200)
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices to shard over")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = make_checkpoint(tmp, args.size_mb)
        results = {name: measure(body, tmp, args.devices) for name, body in LOADERS.items()}
    base_s, base_rss = results["transformers.from_pretrained"]
    print(f"checkpoint: {size / 1e6:.0f} MB, devices: {args.devices}")
    print(f"{'loader':32s} {'seconds':>8s} {'peak RSS growth':>16s} {'/ ckpt':>7s} {'time ratio':>11s} {'RSS ratio':>10s}")
    for name, (seconds, growth) in results.items():
        print(
            f"{name:32s} {seconds:8.2f} {growth / 1e6:13.0f} MB {growth / size:7.2f} "
            f"{seconds / base_s:11.2f} {growth / max(base_rss, 1):10.2f}"
        )


if __name__ == "__main__":
    main()
