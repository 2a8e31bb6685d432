"""The probe seam: readings as frozen dataclasses and the one async backend interface.

Bytes are ``int | None``: None means *unknown*, never 0. A backend answers for a set of
devices in **one round** (whole-device memory and the compute processes), so a gate decision
never mixes samples taken at different times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One physical GPU, canonically identified. ``key`` is what events and gates use."""

    index: int  # NVML (PCI-order) index on its node
    uuid: str  # "GPU-..." as NVML reports it
    bus_id: str  # "00000000:3B:00.0" as NVML / nvidia-smi print it
    name: str = ""
    total_bytes: int | None = None
    node: str | None = None  # set for GPUs on other Ray nodes

    key: str = field(init=False, repr=False, compare=False)  # node-qualified uuid
    _label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: keys are compared on every probe round, and labels written in
        # every gate decision's detail.
        object.__setattr__(self, "key", f"{self.node}/{self.uuid}" if self.node else self.uuid)
        label = f"{self.node}/gpu{self.index}" if self.node else f"gpu{self.index}"
        object.__setattr__(self, "_label", label)

    def label(self) -> str:
        """Short human label: ``gpu0`` or ``node-a/gpu0``."""
        return self._label


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """Whole-device memory of one GPU in one round."""

    device: GpuDevice
    total_bytes: int | None
    used_bytes: int | None  # v2 semantics: every process, co-tenants included; no reserve
    free_bytes: int | None
    reserved_bytes: int | None  # driver/firmware reserve (v2); None where unknown
    semantics: str = "v2"  # "v2" | "v1" (used includes the reserve) | "smi"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process on one GPU. ``used_bytes`` None: the driver would not say."""

    device: GpuDevice
    pid: int
    used_bytes: int | None


@dataclass(frozen=True, slots=True)
class UnplacedProcess:
    """A compute process whose GPU is not known (legacy nvidia-smi query): usage summed over
    every GPU it uses."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True, slots=True)
class ProbeRound:
    """Everything one probe round saw, for the devices asked about (in that order)."""

    backend: str
    sampled_at: float  # the injected clock's ``now()`` when the round completed
    memory: tuple[DeviceMemory, ...]
    processes: tuple[GpuProcess, ...]
    # False when processes cannot be placed on a GPU (legacy nvidia-smi query): per-GPU
    # attribution is then unknown, whole-device figures stay valid.
    per_gpu_processes: bool = True
    notes: tuple[str, ...] = ()  # degradations worth saying: "v1 memory semantics", ...
    # Device keys whose process list the driver would not give (NotSupported/NoPermission):
    # per-process figures there are unknown, whole-device figures stay valid.
    unknown_processes: tuple[str, ...] = ()
    # Processes that could not be placed on a GPU (only when ``per_gpu_processes`` is False).
    unplaced: tuple[UnplacedProcess, ...] = ()

    def memory_of(self, device: GpuDevice) -> DeviceMemory:
        for mem in self.memory:
            if mem.device.key == device.key:
                return mem
        raise KeyError(f"{device.label()} ({device.key}) was not in this probe round")

    def processes_on(self, device: GpuDevice) -> tuple[GpuProcess, ...]:
        return tuple(p for p in self.processes if p.device.key == device.key)

    def processes_known(self, device: GpuDevice) -> bool:
        """Whether ``processes_on(device)`` is the full list (else per-process is unknown)."""
        return self.per_gpu_processes and device.key not in self.unknown_processes

    @property
    def devices(self) -> tuple[GpuDevice, ...]:
        return tuple(m.device for m in self.memory)


@runtime_checkable
class ProbeBackend(Protocol):
    """One source of GPU memory readings. Errors are :mod:`offload_fsm.core.errors` ProbeErrors."""

    name: str

    async def devices(self) -> tuple[GpuDevice, ...]:
        """Every GPU this backend sees, in NVML index order."""
        ...

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        """One round for ``devices``: memory of each, and their compute processes."""
        ...

    async def aclose(self) -> None: ...


def rounds_are_cheap(backend: ProbeBackend) -> bool:
    """Whether ``backend`` says a round of it costs less than batching it (its optional
    ``cheap_rounds`` attribute, False when absent): an in-memory ledger does, NVML, nvidia-smi
    and remote rounds do not. The orchestrator shares rounds between gates only where they
    are not cheap, unless told otherwise (``OrchestratorConfig.share_probe_rounds``)."""
    return bool(getattr(backend, "cheap_rounds", False))
