"""Multi-host training with real processes: two `python -m swift_jax.train` processes on loopback (torchrun-style
variables, 2 CPU devices each, gloo collectives) form one run with FSDP over all 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
QUICK = os.path.join(ROOT, "swift_jax", "assets", "quickstart")
FLAGS = [
    "--model", QUICK, "--init_from_scratch", "true", "--dtype", "float32", "--tuner_type", "full",
    "--dataset", os.path.join(QUICK, "train.jsonl") + "#200", "--max_length", "32", "--per_device_train_batch_size", "1",
    "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none",
    "--fsdp_size", "4", "--max_steps", "4", "--save_steps", "2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def start_two_processes(*flags, module: str = "swift_jax.train", base: list[str] = FLAGS) -> list[subprocess.Popen]:
    """One `python -m module *base *flags` job as two processes (ranks 0 and 1) meeting on a free loopback port."""
    port = str(_free_port())
    return [
        subprocess.Popen([sys.executable, "-m", module, *base, *flags], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env=_env(2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank)))
        for rank in range(2)
    ]


def train_two_processes(*flags, **launch) -> list[str]:
    """Run one training job as two processes (`launch`: see start_two_processes); returns their outputs (both
    must exit 0)."""
    procs = start_two_processes(*flags, **launch)
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    return outputs


def losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "logging.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_two_processes_train_one_run_that_resumes(tmp_path):
    single = subprocess.run([sys.executable, "-m", "swift_jax.train", *FLAGS, "--output_dir", str(tmp_path / "one")],
                            cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    (reference,) = [os.path.join(tmp_path / "one", d) for d in os.listdir(tmp_path / "one")]

    out = tmp_path / "two"
    train_two_processes("--output_dir", str(out))
    (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]  # one run folder, agreed by both processes
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    expected, got = losses(reference), losses(run_dir)
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), (step, got, expected)

    # the full fine-tuning checkpoint is an HF folder written from the shards of both processes
    import torch
    import transformers

    import swift_jax

    checkpoint = os.path.join(run_dir, "checkpoint-4")
    assert {"config.json", "model.safetensors", "tokenizer.json", "args.json", "state", "data"} <= set(os.listdir(checkpoint))
    ids = np.arange(3, 19, dtype=np.int64)[None]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)(torch.from_numpy(ids)).logits
    ours = np.asarray(swift_jax.load_model(os.path.join(reference, "checkpoint-4"))(ids.astype(np.int32)))
    assert np.abs(ours - theirs.detach().numpy()).max() < 1e-3  # the 2-process weights = the 1-process weights

    train_two_processes("--output_dir", str(out), "--resume_from_checkpoint", os.path.join(run_dir, "checkpoint-2"))
    resumed = max((os.path.join(out, d) for d in os.listdir(out)), key=lambda d: int(os.path.basename(d)[1:].split("-")[0]))
    after = losses(resumed)
    assert sorted(after) == [3, 4]
    for step in after:
        assert after[step] == pytest.approx(got[step], rel=1e-5)


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
    """Preemption reaches hosts at different times: the signalled process and the other agree on one step, both
    save that checkpoint together and exit 0 (before, the checkpoint never finished and neither exited)."""
    import signal
    import time

    out = tmp_path / "pre"
    procs = start_two_processes("--output_dir", str(out), "--max_steps", "100000", "--save_steps", "100000")
    deadline = time.time() + 240
    log = None
    while time.time() < deadline and all(p.poll() is None for p in procs):
        logs = [os.path.join(out, d, "logging.jsonl") for d in (os.listdir(out) if out.exists() else [])]
        if logs and os.path.exists(logs[0]) and losses(os.path.dirname(logs[0])):
            log = logs[0]
            break
        time.sleep(0.2)
    assert log, [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
    procs[1].send_signal(signal.SIGTERM)  # only the second host is preempted
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outputs]
    run_dir = os.path.dirname(log)
    (saved,) = [d for d in os.listdir(run_dir) if d.startswith("checkpoint-")]
    assert {"config.json", "model.safetensors", "state", "data"} <= set(os.listdir(os.path.join(run_dir, saved)))
    assert "SIGTERM: saving checkpoint at step" in outputs[0]  # process 0 learned of it through the agreement


def test_packed_run_logs_the_same_losses_on_one_or_two_processes(tmp_path):
    """Packing builds each global batch the same way whatever the process count: 2 processes x 2 devices log the
    losses of 1 process x 4 devices (before, each process packed its own share of the rows: 1.8e-3 apart)."""
    flags = [*FLAGS[: FLAGS.index("--max_length")], "--max_length", "64", "--packing", "true",
             "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3",
             "--logging_steps", "1", "--report_to", "none", "--fsdp_size", "4", "--max_steps", "3", "--save_steps", "100"]
    single = subprocess.run([sys.executable, "-m", "swift_jax.train", *flags, "--output_dir", str(tmp_path / "one")],
                            cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    train_two_processes("--output_dir", str(tmp_path / "two"), base=flags)
    (one,), (two,) = ([os.path.join(tmp_path / d, r) for r in os.listdir(tmp_path / d)] for d in ("one", "two"))
    expected, got = losses(one), losses(two)
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), (step, got, expected)
