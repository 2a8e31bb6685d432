"""Factories that open a probe backend inside a node's actor (picklable, shipped to Ray)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from offload_fsm.core.errors import ConfigError
from offload_fsm.probe.base import ProbeBackend
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_devices
from offload_fsm.sim.fake_gpus import FakeGpus


class BackendFactory(Protocol):
    """Opens a probe backend inside the node's actor. Must be picklable (module-level)."""

    def __call__(self, node: str) -> Awaitable[ProbeBackend]: ...


@dataclass(frozen=True, slots=True)
class OpenBackend:
    """The node's real GPUs: :func:`offload_fsm.probe.select.open_backend` by name
    (``auto`` = NVML, else nvidia-smi)."""

    name: str = "auto"
    smi_executable: str = "nvidia-smi"

    async def __call__(self, node: str) -> ProbeBackend:
        from offload_fsm.probe.select import open_backend

        if self.name == "fake":
            raise ConfigError("backend", self.name, "auto | nvml | smi (use FakeNodeBackend)")
        return await open_backend(self.name, smi_executable=self.smi_executable)


@dataclass(frozen=True, slots=True)
class FakeNodeBackend:
    """``count`` simulated GPUs tagged with the node (tests; drive the ledger with
    :meth:`RayProbe.apply`)."""

    count: int = 8
    spec: FakeDeviceSpec = dataclasses.field(default_factory=FakeDeviceSpec)

    async def __call__(self, node: str) -> ProbeBackend:
        return FakeBackend(FakeGpus(make_devices(self.count, self.spec, node=node)))
