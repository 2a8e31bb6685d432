"""What fault injection and a watched trainer see of a test world.

:class:`~offload_fsm.testing.world.World` builds both and hands itself to them; they know it
only through this protocol, so that ``world.py`` is the one module of the kit that imports the
others (no import circle, also not for type checking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from offload_fsm.orchestrator.orchestrator import Orchestrator
from offload_fsm.probe.base import GpuDevice
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import FaultPlan
from offload_fsm.testing.log import Finding
from offload_fsm.timing.clock import VirtualClock


class FaultTarget(Protocol):
    """An engine or trainer that faults can be planned on: its plan and its call counts."""

    @property
    def faults(self) -> FaultPlan: ...

    @property
    def calls(self) -> Mapping[str, int]: ...


class WorldView(Protocol):
    """The parts of a test world that faults and watched trainers use."""

    @property
    def clock(self) -> VirtualClock: ...

    @property
    def gpus(self) -> FakeGpus: ...

    @property
    def probe(self) -> FakeBackend: ...

    @property
    def orchestrator(self) -> Orchestrator: ...

    @property
    def engines(self) -> Mapping[str, FaultTarget]: ...

    @property
    def trainers(self) -> Mapping[str, FaultTarget]: ...

    def device(self, index: int) -> GpuDevice: ...

    def find(self, rule: str, engine_id: str, what: str, message: str) -> Finding: ...

    def check_truth(self, engine_id: str, devices: Sequence[GpuDevice], what: str) -> None: ...
