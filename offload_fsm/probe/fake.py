"""A deterministic, scripted GPU model: the embedded default and the tests' backend.

:class:`FakeGpus` is the ledger (which pid holds how many bytes on which device, plus a
driver reserve per device); simulated engines move memory in it and probes read it.
:class:`FakeBackend` answers probe rounds from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from offload_fsm.clock import Clock, RealClock
from offload_fsm.errors import DeviceIdError
from offload_fsm.probe.base import GIB, DeviceMemory, GpuDevice, GpuProcess, ProbeRound


@dataclass(frozen=True, slots=True)
class FakeDeviceSpec:
    name: str = "NVIDIA H100 80GB HBM3 (simulated)"
    total_bytes: int = 80 * GIB
    reserved_bytes: int = 0


def make_devices(
    count: int, spec: FakeDeviceSpec | None = None, node: str | None = None
) -> tuple[GpuDevice, ...]:
    spec = spec or FakeDeviceSpec()
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
        for i in range(count)
    )


class FakeGpus:
    """The ledger of a simulated machine's GPU memory."""

    def __init__(self, devices: Sequence[GpuDevice], clock: Clock | None = None) -> None:
        if not devices:
            raise ValueError("a fake machine needs at least one device")
        self.devices = tuple(devices)
        self.clock: Clock = clock or RealClock()
        self._usage: dict[tuple[int, str], int] = {}  # (pid, device key) -> bytes
        self._unknown: set[int] = set()  # pids whose usage the "driver" will not report
        self._sources: list[Callable[[], Iterable[tuple[int, str, int]]]] = []

    def add_source(self, source: Callable[[], Iterable[tuple[int, str, int]]]) -> None:
        """Extra usage read at every snapshot: ``(pid, device key, bytes)`` rows, e.g. from
        simulated engine processes that keep their ledger in files."""
        self._sources.append(source)

    def _entries(self) -> dict[tuple[int, str], int]:
        if not self._sources:
            return self._usage
        merged = dict(self._usage)
        for source in self._sources:
            for pid, key, nbytes in source():
                if nbytes > 0:
                    merged[(pid, key)] = merged.get((pid, key), 0) + nbytes
        return merged

    def device(self, ref: int | str | GpuDevice) -> GpuDevice:
        if isinstance(ref, GpuDevice):
            ref = ref.key
        for dev in self.devices:
            if ref in (dev.index, dev.uuid, dev.key):
                return dev
        raise DeviceIdError(f"fake GPU {ref!r} does not exist (have {len(self.devices)})")

    def set_usage(self, pid: int, device: int | str | GpuDevice, nbytes: int) -> None:
        """``pid`` now holds ``nbytes`` on ``device`` (0 removes the process there)."""
        dev = self.device(device)
        if nbytes < 0:
            raise ValueError(f"usage cannot be negative: {nbytes}")
        if nbytes == 0:
            self._usage.pop((pid, dev.key), None)
        else:
            self._usage[(pid, dev.key)] = nbytes

    def usage(self, pid: int, device: int | str | GpuDevice) -> int:
        return self._usage.get((pid, self.device(device).key), 0)

    def used(self, device: int | str | GpuDevice) -> int:
        key = self.device(device).key
        return sum(b for (_, k), b in self._entries().items() if k == key)

    def hide_usage(self, pid: int, hidden: bool = True) -> None:
        """Report ``pid``'s per-process usage as unknown (None), as some drivers do."""
        (self._unknown.add if hidden else self._unknown.discard)(pid)

    def snapshot(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        memory = []
        processes = []
        entries = self._entries()
        for dev in devices:
            used = sum(b for (_, k), b in entries.items() if k == dev.key)
            total = dev.total_bytes
            memory.append(
                DeviceMemory(
                    device=dev,
                    total_bytes=total,
                    used_bytes=used,
                    free_bytes=None if total is None else max(0, total - used),
                    reserved_bytes=0,
                )
            )
            for (pid, key), nbytes in sorted(entries.items()):
                if key == dev.key:
                    shown = None if pid in self._unknown else nbytes
                    processes.append(GpuProcess(device=dev, pid=pid, used_bytes=shown))
        return ProbeRound("fake", self.clock.now(), tuple(memory), tuple(processes))


class FakeBackend:
    """Probe backend over a :class:`FakeGpus` ledger."""

    name = "fake"

    def __init__(self, gpus: FakeGpus) -> None:
        self.gpus = gpus
        self.rounds = 0

    async def devices(self) -> tuple[GpuDevice, ...]:
        return self.gpus.devices

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        self.rounds += 1
        return self.gpus.snapshot(devices)

    async def aclose(self) -> None:
        return None
