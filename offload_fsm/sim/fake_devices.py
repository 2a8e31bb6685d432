"""The GPUs of a simulated machine: fake NVML identities (uuid, bus id, model, memory),
one node's worth. The ledger that moves memory on them is :mod:`offload_fsm.sim.fake_gpus`
(which re-exports these names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from offload_fsm.probe.base import GIB, GpuDevice


@dataclass(frozen=True, slots=True)
class FakeDeviceSpec:
    name: str = "NVIDIA H100 80GB HBM3 (simulated)"
    total_bytes: int = 80 * GIB
    reserved_bytes: int = 0


def make_devices(
    count: int, spec: FakeDeviceSpec | None = None, node: str | None = None
) -> tuple[GpuDevice, ...]:
    spec = spec or FakeDeviceSpec()
    return make_mixed_devices([spec] * count, node=node)


def make_mixed_devices(
    specs: Sequence[FakeDeviceSpec], node: str | None = None
) -> tuple[GpuDevice, ...]:
    """One device per spec, in PCI (index) order: a machine with mixed GPU models."""
    tag = f"{node}-" if node else ""
    return tuple(
        GpuDevice(
            index=i,
            uuid=f"GPU-fake{tag}{i:04d}-0000-4000-8000-{i:012x}",
            bus_id=f"00000000:{0x10 + i:02X}:00.0",
            name=spec.name,
            total_bytes=spec.total_bytes,
            node=node,
        )
        for i, spec in enumerate(specs)
    )
