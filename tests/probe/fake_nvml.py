"""A pynvml-like module object for NVML backend tests: scripted GPUs, real pynvml errors.

Errors are instances of nvidia-ml-py's own ``NVMLError`` subclasses (``NVMLError_Timeout``
...), so the backend's mapping is tested against the real classes. Every call records the
thread it ran on. ``fail(name, *errors)`` queues errors for the next calls of ``name``;
``block(name)`` makes the next call of ``name`` wait until ``release()``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

GIB = 1024**3
MIB = 1024**2


@dataclass
class FakeNvmlGpu:
    uuid: str
    bus_id: str
    name: str = "NVIDIA H200"
    total: int = 141 * GIB
    reserved: int = 600 * MIB
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> bytes
    mig: tuple[int, int] | None = (0, 0)

    @property
    def used(self) -> int:
        return sum(b or 0 for b in self.processes.values())


@dataclass
class _Memory:
    total: int
    used: int
    free: int
    reserved: int | None = None


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None  # pynvml's field name


@dataclass
class _Pci:
    busId: bytes


class FakeNvml:
    """Stands in for the ``pynvml`` module."""

    NVMLError = pynvml.NVMLError
    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def __init__(
        self,
        gpus: list[FakeNvmlGpu],
        *,
        init_error: BaseException | None = None,
        has_memory_v2: bool = True,
        has_processes_v3: bool = True,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.has_memory_v2 = has_memory_v2
        self.has_processes_v3 = has_processes_v3
        self.calls: list[tuple[str, int]] = []  # (function, thread id)
        self.inits = 0
        self.shutdowns = 0
        self.initialized = False
        self._failures: dict[str, deque[BaseException]] = {}
        self._blocked: set[str] = set()
        self._gate = threading.Event()
        self.entered = threading.Event()  # set when a blocked call has started
        self._lock = threading.Lock()

    # --- scripting ----------------------------------------------------------------------

    def fail(self, name: str, *errors: BaseException) -> None:
        self._failures.setdefault(name, deque()).extend(errors)

    def block(self, name: str) -> None:
        self._gate.clear()
        self.entered.clear()
        self._blocked.add(name)

    def release(self) -> None:
        self._blocked.clear()
        self._gate.set()

    def thread_ids(self, name: str | None = None) -> set[int]:
        return {t for n, t in self.calls if name is None or n == name}

    def _enter(self, name: str) -> None:
        with self._lock:
            self.calls.append((name, threading.get_ident()))
            queued = self._failures.get(name)
            error = queued.popleft() if queued else None
        if name in self._blocked:
            self.entered.set()
            self._gate.wait(timeout=30)
        if error is not None:
            raise error
        if name not in ("nvmlInit", "nvmlShutdown") and not self.initialized:
            raise pynvml.NVMLError_Uninitialized()

    def _gpu(self, handle: Any) -> FakeNvmlGpu:
        if not isinstance(handle, FakeNvmlGpu):
            raise pynvml.NVMLError_InvalidArgument()
        return handle

    # --- the pynvml surface --------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.shutdowns += 1
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeNvmlGpu:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeNvmlGpu:
        self._enter("nvmlDeviceGetHandleByUUID")
        for gpu in self.gpus:
            if gpu.uuid == uuid:  # exact, as NVML: no prefixes, no lowercase
                return gpu
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetUUID")
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetPciInfo(self, handle: Any) -> _Pci:
        self._enter("nvmlDeviceGetPciInfo")
        return _Pci(self._gpu(handle).bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> _Memory:
        self._enter("nvmlDeviceGetMemoryInfo" + ("_v2" if version else ""))
        gpu = self._gpu(handle)
        if version:
            if not self.has_memory_v2:
                raise pynvml.NVMLError_FunctionNotFound()
            free = gpu.total - gpu.reserved - gpu.used
            return _Memory(gpu.total, gpu.used, free, gpu.reserved)
        # v1: used includes the reserve
        return _Memory(gpu.total, gpu.used + gpu.reserved, gpu.total - gpu.used - gpu.reserved)

    def _procs(self, name: str, handle: Any) -> list[_Proc]:
        self._enter(name)
        return [_Proc(pid, b) for pid, b in sorted(self._gpu(handle).processes.items())]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any) -> list[_Proc]:
        if not self.has_processes_v3:
            self._enter("nvmlDeviceGetComputeRunningProcesses_v3")
            raise pynvml.NVMLError_FunctionNotFound()
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v3", handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[_Proc]:
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v2", handle)

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        mode = self._gpu(handle).mig
        if mode is None:
            raise pynvml.NVMLError_NotSupported()
        return list(mode)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return "580.159.04"

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return "13.580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return 13000


def h200s(count: int) -> list[FakeNvmlGpu]:
    return [
        FakeNvmlGpu(
            uuid=f"GPU-{i:08x}-1111-2222-3333-{i:012x}",
            bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
        )
        for i in range(count)
    ]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition set by another thread (tests only)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
