"""Meshes, sharding rules, multi-host settings, memory accounting and streamed sharded loading."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import swift_jax
from swift_jax.parallel import DistributedArgs, logical_rules, logical_to_spec, make_mesh, per_device_bytes
from swift_jax.parallel.distributed import distributed_settings
from tiny_models import build_hf_model, hf_logits, save_hf_model


def test_default_mesh_is_pure_fsdp_over_all_devices():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "expert": 1, "sequence": 1, "tensor": 1}


def test_sizes_that_do_not_multiply_to_the_device_count_are_an_error():
    with pytest.raises(ValueError, match=r"multiply to 6, but there are 8 devices"):
        make_mesh(data_parallel_size=3, fsdp_size=2)
    with pytest.raises(ValueError, match=r"only one parallel size may be -1"):
        make_mesh(data_parallel_size=-1, fsdp_size=-1)
    with pytest.raises(ValueError, match=r"does not divide 8"):
        make_mesh(tensor_parallel_size=3)


def test_rules_map_logical_names_and_can_be_overridden():
    mesh = make_mesh(fsdp_size=4, tensor_parallel_size=2)
    assert logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "seq", "embed_act"), mesh) == P("fsdp", None, None)
    with logical_rules({"mlp": None, "embed": ("fsdp", "tensor")}):
        assert logical_to_spec(("embed", "mlp"), mesh) == P(("fsdp", "tensor"), None)
    assert logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    hf = build_hf_model("qwen2")
    return hf, save_hf_model(hf, tmp_path_factory.mktemp("qwen2"))


@pytest.mark.parametrize(
    "sizes,q_spec,down_spec",
    [
        (dict(fsdp_size=8), P("fsdp", None), P(None, "fsdp")),  # 64 % 8 == 0; q out dim replicated (no tensor axis)
        (dict(fsdp_size=4, tensor_parallel_size=2), P("fsdp", "tensor"), P("tensor", "fsdp")),
        (dict(data_parallel_size=2, fsdp_size=2, tensor_parallel_size=2), P("fsdp", "tensor"), P("tensor", "fsdp")),
    ],
)
def test_params_shard_as_the_rules_say_and_logits_do_not_change(qwen2, sizes, q_spec, down_spec):
    hf, path = qwen2
    mesh = make_mesh(**sizes)
    model = swift_jax.load_model(path, mesh=mesh)
    layer = model.model.stacks[0].layers[0]  # [layers, ...]: the stacking axis is never sharded
    assert layer.self_attn.q_proj.kernel[...].sharding.spec == P(None, *q_spec)
    assert layer.mlp.down_proj.kernel[...].sharding.spec == P(None, *down_spec)
    ids = np.random.RandomState(0).randint(0, 128, (4, 10)).astype(np.int32)
    with jax.set_mesh(mesh):
        logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids))
    assert np.abs(np.asarray(logits) - hf_logits(hf, ids)).max() < 1e-4


def test_per_device_bytes_counts_shards(qwen2):
    _, path = qwen2
    whole = per_device_bytes(nnx.state(swift_jax.load_model(path), nnx.Param))
    sharded = per_device_bytes(nnx.state(swift_jax.load_model(path, mesh=make_mesh(fsdp_size=8)), nnx.Param))
    assert whole / 8 <= sharded < whole / 2  # norms/biases that do not divide stay replicated


def test_distributed_settings_from_arguments_and_environment():
    assert distributed_settings(DistributedArgs(), env={}) is None
    explicit = DistributedArgs("10.0.0.1:1234", 4, 2)
    assert distributed_settings(explicit, env={}) == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
    with pytest.raises(ValueError, match="give all of --coordinator_address"):
        distributed_settings(DistributedArgs(num_processes=2), env={})
    torchrun = {"MASTER_ADDR": "node0", "MASTER_PORT": "29500", "WORLD_SIZE": "16", "RANK": "3"}
    assert distributed_settings(DistributedArgs(), env=torchrun) == dict(
        coordinator_address="node0:29500", num_processes=16, process_id=3
    )
    assert distributed_settings(DistributedArgs(), env={"SLURM_NTASKS": "4"}) == {}  # jax detects SLURM itself
    assert distributed_settings(DistributedArgs(), env={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}


def test_streamed_sharded_load_keeps_peak_rss_near_checkpoint_size(tmp_path):
    """A ~230 MB checkpoint loaded over 8 devices: peak RSS growth stays under 1.3x its size.

    The subprocess first loads a tiny checkpoint so imports and runtime set-up are not counted.
    """
    import torch
    import transformers

    def qwen2(path, **kw):
        config = transformers.Qwen2Config(num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False, **kw)
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path, max_shard_size="60MB")

    qwen2(tmp_path / "big", vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8)
    qwen2(tmp_path / "warmup", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    size = sum(f.stat().st_size for f in (tmp_path / "big").glob("*.safetensors"))
    script = textwrap.dedent(
        f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, swift_jax
        from swift_jax.parallel import make_mesh

        def status(field):  # VmHWM = peak RSS (ru_maxrss would inherit pytest's peak across exec)
            line = next(l for l in open("/proc/self/status") if l.startswith(field))
            return int(line.split()[1]) * 1024

        mesh = make_mesh(fsdp_size=8)
        warm = swift_jax.load_model({str(tmp_path / "warmup")!r}, mesh=mesh)
        del warm
        before = status("VmRSS")
        model = swift_jax.load_model({str(tmp_path / "big")!r}, mesh=mesh)
        print(status("VmHWM") - before)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 1.3 * size, (growth / size, size)
