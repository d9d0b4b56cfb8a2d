"""Two real processes on loopback join one JAX run through `initialize_distributed` (gloo CPU collectives)."""

import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from swift_jax.parallel import DistributedArgs, initialize_distributed, is_main_process, make_mesh
    initialize_distributed(DistributedArgs(coordinator_address=sys.argv[2], num_processes=2, process_id=int(sys.argv[1])))
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = make_mesh()  # pure FSDP over the 4 devices of both processes
    x = jax.make_array_from_callback((8,), NamedSharding(mesh, P("fsdp")), lambda i: np.arange(8.0, dtype=np.float32)[i])
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(), dict(mesh.shape)["fsdp"], float(total), is_main_process())
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_mesh():
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(rank), address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = []
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        results.append(next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:])
    assert sorted(results) == [
        ["0", "2", "4", "4", "28.0", "True"],
        ["1", "2", "4", "4", "28.0", "False"],
    ]
