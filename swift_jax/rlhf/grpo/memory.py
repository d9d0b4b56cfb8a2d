"""Device memory of the compiled rollout and update programs, known (and checked) before step 1.

Both programs have static shapes, so XLA's `memory_analysis()` of the compiled executables gives what
each needs: its arguments (weights, optimizer state, batch), outputs and temporaries (activations, the
KV cache of every completion up to `max_completion_length`). The run's peak is the larger of the two
(they never run at once). A configuration over the device's limit is refused with the figures and what
to change. CPU devices report no limit, so `--max_device_memory_gib` sets one (tests; shared devices).
"""

from __future__ import annotations

import dataclasses

import jax

GIB = 1024**3

# What shrinks each program, in the order worth trying.
HINTS = {
    "rollout": "fewer completions per rollout (per_device_train_batch_size x gradient_accumulation_steps), a shorter "
    "--max_completion_length, or more devices",
    "update": "a smaller --per_device_train_batch_size (raise --gradient_accumulation_steps to keep the step), a shorter "
    "--max_completion_length, LoRA instead of full fine-tuning, or more devices",
}


class DeviceMemoryError(MemoryError):
    """A configuration whose compiled programs do not fit the device."""


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes one compiled program needs on a device (XLA's `CompiledMemoryStats`)."""

    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs written over donated arguments

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def describe(self) -> str:
        g = lambda b: f"{b / GIB:.3f} GiB"
        return (
            f"{self.name}: {g(self.total_bytes)} (arguments {g(self.argument_bytes)}, outputs {g(self.output_bytes)}, "
            f"temporaries {g(self.temp_bytes)}, aliased {g(self.alias_bytes)})"
        )


def program_memory(name: str, compiled: jax.stages.Compiled) -> ProgramMemory:
    """The memory figures of a compiled program (`jax.jit(f).lower(...).compile()`)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis for the {name} program")
    return ProgramMemory(
        name,
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
        int(stats.alias_size_in_bytes),
    )


def device_limit_bytes(max_device_memory_gib: float | None = None) -> int | None:
    """The per-device budget: `--max_device_memory_gib` when given, else the device's own limit (None on CPU)."""
    if max_device_memory_gib is not None:
        return int(max_device_memory_gib * GIB)
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def check_memory(programs: list[ProgramMemory], max_device_memory_gib: float | None = None) -> str:
    """A report of every program's memory; raises `DeviceMemoryError` (figures and hints) when one does not fit."""
    limit = device_limit_bytes(max_device_memory_gib)
    lines = [p.describe() for p in programs]
    budget = "no limit known (CPU; set --max_device_memory_gib)" if limit is None else f"{limit / GIB:.3f} GiB per device"
    report = "device memory per program: " + "; ".join(lines) + f"; budget {budget}"
    over = [p for p in programs if limit is not None and p.total_bytes > limit]
    if over:
        fixes = "; ".join(f"for the {p.name} ({p.total_bytes / GIB:.3f} GiB): {HINTS.get(p.name, 'a smaller batch')}" for p in over)
        raise DeviceMemoryError(f"this configuration does not fit: {report}. To fit, use {fixes}")
    return report
