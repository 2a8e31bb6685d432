"""The fake probe backend: probe rounds read from a :class:`~offload_fsm.sim.fake_gpus.FakeGpus`
ledger, with NVML-style errors and hangs injected at chosen polls (:class:`Fault`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload_fsm.core.errors import BackendUnavailable, DeviceUnhealthy, TransientProbeError
from offload_fsm.probe.base import GpuDevice, ProbeRound

if TYPE_CHECKING:
    from offload_fsm.sim.fake_gpus import FakeGpus

_TRANSIENT = ("Timeout", "Unknown Error", "Insufficient Size")


@dataclass(frozen=True, slots=True)
class Fault:
    """What goes wrong at one poll. Build with the class methods."""

    kind: str  # "transient" | "lost" | "reset" | "unavailable" | "hang"
    detail: str = ""
    seconds: float = 0.0

    @classmethod
    def transient(cls, nvml_error: str = "Timeout") -> Fault:
        """An NVML Timeout / Unknown Error / Insufficient Size: retried by the retry layer."""
        if nvml_error not in _TRANSIENT:
            raise ValueError(f"{nvml_error!r} is not a transient NVML error ({_TRANSIENT})")
        return cls("transient", nvml_error)

    @classmethod
    def gpu_lost(cls, device: str = "") -> Fault:
        return cls("lost", device)

    @classmethod
    def reset_required(cls, device: str = "") -> Fault:
        return cls("reset", device)

    @classmethod
    def unavailable(cls, why: str = "NVML Shared Library Not Found") -> Fault:
        return cls("unavailable", why)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """The round blocks ``seconds`` on the ledger's clock, then answers."""
        if seconds < 0:
            raise ValueError(f"a hang cannot be negative: {seconds}")
        return cls("hang", seconds=seconds)


class FakeBackend:
    """Probe backend over a :class:`FakeGpus` ledger, with faults injected at chosen polls."""

    name = "fake"
    # A round reads an in-memory ledger: cheaper than batching it with other gates' rounds
    # (probe.base.rounds_are_cheap; measured in docs/performance.md).
    cheap_rounds = True

    def __init__(self, gpus: FakeGpus, *, faults: Mapping[int, Fault] | None = None) -> None:
        self.gpus = gpus
        self.rounds = 0  # probe() calls so far; poll n is the n-th call (1-based)
        self._faults: dict[int, Fault] = dict(faults or {})
        self.closed = False

    def inject(self, poll: int, fault: Fault) -> None:
        """Make the ``poll``-th probe() call (1-based, counting every call) fail/hang."""
        if poll <= self.rounds:
            raise ValueError(f"poll {poll} has already happened (at {self.rounds})")
        self._faults[poll] = fault

    async def devices(self) -> tuple[GpuDevice, ...]:
        return self.gpus.devices

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        self.rounds += 1
        fault = self._faults.pop(self.rounds, None)
        if fault is not None:
            await self._apply(fault, devices)
        known = self.gpus.keys
        for dev in devices:
            if dev.key not in known:
                self.gpus.device(dev)  # raises: unknown devices are an error, as with NVML
        return self.gpus.snapshot(devices)

    async def _apply(self, fault: Fault, devices: Sequence[GpuDevice]) -> None:
        where = f"(injected at poll {self.rounds})"
        if fault.kind == "hang":
            await self.gpus.clock.sleep(fault.seconds)
            return
        if fault.kind == "transient":
            raise TransientProbeError(f"NVML: {fault.detail} {where}")
        if fault.kind in ("lost", "reset"):
            label = fault.detail or (devices[0].label() if devices else "gpu?")
            what = "GPU is lost" if fault.kind == "lost" else "GPU requires restart"
            raise DeviceUnhealthy(f"{label}: NVML: {what} {where}")
        if fault.kind == "unavailable":
            raise BackendUnavailable(f"NVML: {fault.detail} {where}")
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    async def aclose(self) -> None:
        self.closed = True
