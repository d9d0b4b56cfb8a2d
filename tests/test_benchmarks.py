"""The benchmark scripts run end to end (tiny sizes) and print the tables the docs quote."""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _script(name, *args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_bench_train_measures_every_variant_and_prints_the_ratio():
    out = _script("bench_train.py", "--preset", "ci")
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for variant in ("swift_jax packed", "swift_jax padded", "pytorch padded"):
        assert variant in rows and "skipped" not in rows[variant] and "failed" not in rows[variant], out
    measured = {}
    for variant in ("swift_jax packed", "swift_jax padded", "pytorch padded"):
        tok_s, step_ms, warmup_s, peak_mb, ratio = map(float, rows[variant][len(variant):].split())
        assert tok_s > 0 and step_ms > 0 and warmup_s >= 0 and peak_mb > 0, rows[variant]
        measured[variant] = (tok_s, ratio)
    assert measured["pytorch padded"][1] == 1.0  # the baseline row
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio packed/pytorch: "), out
    # the summary is the packed row's tokens/s over the baseline's (to the 2 printed decimals)
    expected = measured["swift_jax packed"][0] / measured["pytorch padded"][0]
    assert abs(float(last.split(": ")[1]) - expected) <= 0.01 + 0.005 * expected, (last, expected)
    assert abs(measured["swift_jax packed"][1] - expected) <= 0.01 + 0.005 * expected
