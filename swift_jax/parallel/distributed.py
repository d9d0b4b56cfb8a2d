"""Multi-process start-up: `jax.distributed.initialize` when a run spans several hosts.

TPU pod slices and SLURM/Open MPI jobs are detected by JAX itself; plain GPU nodes can use the torchrun-style
variables (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK) or explicit arguments.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import jax
import numpy as np


@dataclasses.dataclass
class DistributedArgs:
    """Where the processes of a multi-host run meet. Leave unset on one host or on TPU pods (auto)."""

    coordinator_address: str | None = None
    """host:port of process 0, e.g. 10.0.0.1:1234. Default: from the environment."""
    num_processes: int | None = None
    """Total number of processes (hosts). Default: from the environment."""
    process_id: int | None = None
    """This process's rank in [0, num_processes). Default: from the environment."""


def distributed_settings(args: DistributedArgs, env: Mapping[str, str] = os.environ) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single-process run.

    Explicit arguments win; then torchrun-style variables; then the launchers JAX detects on its own
    (TPU pods, SLURM, Open MPI), for which the dict is empty.
    """
    explicit = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in explicit):
        if None in explicit:
            raise ValueError(
                "multi-host: give all of --coordinator_address, --num_processes and --process_id, "
                f"got {args.coordinator_address=}, {args.num_processes=}, {args.process_id=}"
            )
        return dict(coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id)
    if int(env.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in env:
        return dict(
            coordinator_address=f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '1234')}",
            num_processes=int(env["WORLD_SIZE"]),
            process_id=int(env.get("RANK", "0")),
        )
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return {}
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return {}
    return None


def initialize_distributed(args: DistributedArgs | None = None) -> bool:
    """Join the multi-host run if there is one; returns True if `jax.distributed` was initialised.

    Must run before anything touches a device.
    """
    settings = distributed_settings(args or DistributedArgs())
    if settings is None:
        return False
    # CPU devices of different processes need a collectives backend (GPU/TPU bring their own; harmless there).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)
    return True


def is_main_process() -> bool:
    """Only process 0 writes logs, plots and args.json."""
    return jax.process_index() == 0


def host_array(x) -> np.ndarray:
    """`x` as one numpy array on this host. An array sharded across processes (FSDP over hosts) is gathered
    from all of them, so every process must call this for the same arrays in the same order."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
