"""How offload_fsm sees GPU memory: backends (NVML, nvidia-smi, fake), ids, attribution."""

from offload_fsm.probe.base import (
    DeviceMemory,
    GpuDevice,
    GpuProcess,
    ProbeBackend,
    ProbeRound,
    UnplacedProcess,
)

__all__ = [
    "DeviceMemory",
    "GpuDevice",
    "GpuProcess",
    "ProbeBackend",
    "ProbeRound",
    "UnplacedProcess",
]
