"""The NVML backend (nvidia-ml-py): in-process.

- **One hop per round**: every NVML call of a round runs in one job on one dedicated worker
  thread: a round's readings of all its GPUs are taken back to back, and the event loop
  never waits on the driver.
  The thread wakes the event loop through the loop's own thread-safe hook, so it works on
  asyncio and trio alike.
- **Init once, lazily** on that thread; **re-init after fork** (a child has no worker thread
  and must call ``nvmlInit`` itself); **never shut down while a call is in flight**: the
  shutdown is a job queued behind every call still running.
- **Memory with v2 semantics** (``nvmlMemory_v2``: ``used`` excludes the ~0.6 GiB driver
  reserve and agrees with nvidia-smi); v1 only where v2 is missing, said in the round's
  notes. Compute processes via the v3 call, else v2; ``usedGpuMemory`` None stays None.
- **Errors are mapped here**: library/driver missing -> BackendUnavailable; Timeout /
  Unknown / InsufficientSize -> TransientProbeError; GpuIsLost / ResetRequired ->
  DeviceUnhealthy; NotSupported / NoPermission on a process list -> that list is unknown.

A pynvml-like module can be injected (tests use one that raises real ``pynvml.NVMLError``
subclasses). NVML error instances are unhashable: they are told apart by ``.value``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import pynvml

from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    TransientProbeError,
)
from offload_fsm.probe.base import DeviceMemory, GpuDevice, GpuProcess, ProbeRound
from offload_fsm.timing.backend import running_asyncio_loop
from offload_fsm.timing.clock import Clock, RealClock

T = TypeVar("T")

# NVML return codes (stable ABI numbers, taken from nvidia-ml-py).
_UNAVAILABLE = frozenset(
    {
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_OPERATING_SYSTEM,
    }
)
_TRANSIENT = frozenset(
    {
        pynvml.NVML_ERROR_TIMEOUT,
        pynvml.NVML_ERROR_UNKNOWN,
        pynvml.NVML_ERROR_INSUFFICIENT_SIZE,
    }
)
_UNHEALTHY = frozenset({pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED})
_NOT_AVAILABLE_HERE = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION})
_MISSING_FUNCTION = frozenset(
    {pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH}
)
_NO_SUCH_DEVICE = frozenset({pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT})
_V1_NOTE = "NVML memory v2 is missing: used includes the driver reserve (v1 semantics)"


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # str() of an unknown code asks the library, which may be gone
        text = type(exc).__name__
    code = _code(exc)
    return f"{text} (NVML error {code})" if code is not None else text


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _loop_waker(event: anyio.Event) -> Callable[[], None]:
    """A callable any thread may call to set ``event`` on the current event loop."""
    loop = running_asyncio_loop()
    if loop is not None:
        running = loop

        def wake_asyncio() -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                running.call_soon_threadsafe(event.set)

        return wake_asyncio

    import trio

    token = trio.lowlevel.current_trio_token()

    def wake_trio() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(event.set)

    return wake_trio


class _Job:
    __slots__ = ("abandoned", "error", "fn", "must_run", "result", "wake")

    def __init__(self, fn: Callable[[], Any], wake: Callable[[], None], must_run: bool) -> None:
        self.fn = fn
        self.wake = wake
        self.must_run = must_run  # runs even when its caller stopped waiting (shutdown)
        self.abandoned = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the waiting task, which re-raises it
            self.error = exc
        if not self.abandoned:
            self.wake()


class _Worker:
    """The one thread that talks to NVML."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.abandoned and not job.must_run:
                continue  # its caller gave up before it started
            job.run()


@dataclass(frozen=True, slots=True)
class NvmlInfo:
    """What ``offload-fsm doctor`` reports about NVML."""

    driver_version: str | None
    nvml_version: str | None
    cuda_driver_version: int | None  # e.g. 13000 for CUDA 13.0
    devices: tuple[GpuDevice, ...]
    mig_modes: tuple[tuple[str, int | None, int | None], ...]  # (key, current, pending)


class NvmlBackend:
    """Probe backend over NVML; see the module docstring."""

    name = "nvml"

    def __init__(
        self,
        nvml: Any = None,
        *,
        clock: Clock | None = None,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._module = nvml  # None: import pynvml on first use
        self.clock: Clock = clock or RealClock()
        self.close_timeout_s = close_timeout_s
        self._worker: _Worker | None = None
        self._worker_pid: int | None = None
        self._getpid = os.getpid
        self._closed = False
        # Touched only on the worker thread:
        self._initialized = False
        self._handles: dict[str, Any] = {}  # uuid -> NVML handle
        self._memory_v2: bool | None = None  # None: not tried yet
        self._processes_v3: bool | None = None
        self.hops = 0  # worker-thread hops so far (one per round)
        self.inits = 0  # nvmlInit calls so far

    # --- the worker thread -------------------------------------------------------------------

    def _ensure_worker(self) -> _Worker:
        pid = self._getpid()
        if self._worker is not None and self._worker_pid == pid:
            return self._worker
        if self._worker is not None:
            # Forked: the parent's thread does not exist here and NVML must be initialised
            # again. (If it does exist, in a test, it is told to leave without shutdown.)
            self._worker.jobs.put(None)
            self._initialized = False
            self._handles.clear()
        self._worker = _Worker(f"offload-fsm-nvml-{pid}")
        self._worker_pid = pid
        return self._worker

    async def _run(self, fn: Callable[[], T], *, must_run: bool = False) -> T:
        if self._closed:
            raise BackendUnavailable("the NVML backend is closed")
        worker = self._ensure_worker()
        event = anyio.Event()
        job = _Job(fn, _loop_waker(event), must_run)
        self.hops += 1
        worker.jobs.put(job)
        try:
            await event.wait()
        except BaseException:
            job.abandoned = True  # a hung call is left behind; its result is dropped
            raise
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    # --- on the worker thread ------------------------------------------------------------------

    def _lib(self) -> Any:
        if self._module is None:
            self._module = pynvml
        return self._module

    def _init(self) -> Any:
        nv = self._lib()
        if not self._initialized:
            try:
                nv.nvmlInit()
            except nv.NVMLError as exc:
                raise BackendUnavailable(f"NVML cannot be initialised: {_describe(exc)}") from exc
            self._initialized = True
            self.inits += 1
        return nv

    def _map(self, exc: BaseException, what: str) -> ProbeError:
        code = _code(exc)
        text = f"NVML {what}: {_describe(exc)}"
        if code in _UNAVAILABLE:
            return BackendUnavailable(text)
        if code in _UNHEALTHY:
            return DeviceUnhealthy(text)
        if code == pynvml.NVML_ERROR_UNINITIALIZED:
            self._initialized = False  # initialise again on the next round
            return TransientProbeError(text)
        if code in _TRANSIENT:
            return TransientProbeError(text)
        return ProbeError(text)

    def _handle(self, nv: Any, dev: GpuDevice) -> Any:
        handle = self._handles.get(dev.uuid)
        if handle is not None:
            return handle
        if dev.node is not None:
            raise DeviceIdError(f"{dev.label()} is on node {dev.node!r}, not this machine")
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(dev.uuid)
        except nv.NVMLError as exc:
            if _code(exc) in _NO_SUCH_DEVICE:
                raise DeviceIdError(
                    f"NVML has no GPU {dev.uuid} ({dev.label()}, {dev.bus_id})"
                ) from exc
            raise self._map(exc, f"handle of {dev.label()}") from exc
        self._handles[dev.uuid] = handle
        return handle

    def _memory(self, nv: Any, handle: Any, dev: GpuDevice, notes: list[str]) -> DeviceMemory:
        version = getattr(nv, "nvmlMemory_v2", None)
        if self._memory_v2 is not False and version is not None:
            try:
                m = nv.nvmlDeviceGetMemoryInfo(handle, version=version)
            except nv.NVMLError as exc:
                if _code(exc) not in _MISSING_FUNCTION | {pynvml.NVML_ERROR_NOT_SUPPORTED}:
                    raise self._map(exc, f"memory of {dev.label()}") from exc
                self._memory_v2 = False
            else:
                self._memory_v2 = True
                return DeviceMemory(dev, m.total, m.used, m.free, m.reserved, "v2")
        if _V1_NOTE not in notes:
            notes.append(_V1_NOTE)
        try:
            m = nv.nvmlDeviceGetMemoryInfo(handle)
        except nv.NVMLError as exc:
            if _code(exc) in _NOT_AVAILABLE_HERE:
                notes.append(f"{dev.label()}: memory unknown ({_describe(exc)})")
                return DeviceMemory(dev, None, None, None, None, "v1")
            raise self._map(exc, f"memory of {dev.label()}") from exc
        return DeviceMemory(dev, m.total, m.used, m.free, None, "v1")

    def _processes(self, nv: Any, handle: Any, dev: GpuDevice) -> list[GpuProcess] | None:
        """The compute processes on ``dev``; None when the driver will not list them."""
        while True:
            if self._processes_v3 is not False and hasattr(
                nv, "nvmlDeviceGetComputeRunningProcesses_v3"
            ):
                call, v3 = nv.nvmlDeviceGetComputeRunningProcesses_v3, True
            elif hasattr(nv, "nvmlDeviceGetComputeRunningProcesses_v2"):
                call, v3 = nv.nvmlDeviceGetComputeRunningProcesses_v2, False
            else:
                call, v3 = nv.nvmlDeviceGetComputeRunningProcesses, False
            try:
                raw = call(handle)
            except nv.NVMLError as exc:
                code = _code(exc)
                if v3 and code in _MISSING_FUNCTION:
                    self._processes_v3 = False
                    continue
                if code in _NOT_AVAILABLE_HERE:
                    return None
                raise self._map(exc, f"processes of {dev.label()}") from exc
            if v3:
                self._processes_v3 = True
            return [
                GpuProcess(
                    dev,
                    int(p.pid),
                    None if p.usedGpuMemory is None else int(p.usedGpuMemory),
                )
                for p in raw
            ]

    def read_round(
        self, devices: Sequence[GpuDevice]
    ) -> tuple[list[DeviceMemory], list[GpuProcess], list[str], list[str]]:
        """Every NVML call of one round, in the calling thread (the worker runs this;
        benchmarks call it directly to measure the calls without the hop)."""
        nv = self._init()
        memory: list[DeviceMemory] = []
        processes: list[GpuProcess] = []
        unknown: list[str] = []
        notes: list[str] = []
        for dev in devices:
            handle = self._handle(nv, dev)
            memory.append(self._memory(nv, handle, dev, notes))
            procs = self._processes(nv, handle, dev)
            if procs is None:
                unknown.append(dev.key)
            else:
                processes.extend(procs)
        return memory, processes, unknown, notes

    def _enumerate(self) -> tuple[GpuDevice, ...]:
        nv = self._init()
        try:
            count = nv.nvmlDeviceGetCount()
            found = []
            for index in range(count):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                bus_id = _text(nv.nvmlDeviceGetPciInfo(handle).busId)
                name = _text(nv.nvmlDeviceGetName(handle))
                total = int(nv.nvmlDeviceGetMemoryInfo(handle).total)
                self._handles[uuid] = handle
                found.append(GpuDevice(index, uuid, bus_id, name, total))
        except nv.NVMLError as exc:
            raise self._map(exc, "device enumeration") from exc
        return tuple(found)

    def _info(self) -> NvmlInfo:
        nv = self._init()
        devices = self._enumerate()

        def ask(fn: Callable[..., Any], *args: Any) -> Any:
            try:
                return fn(*args)
            except nv.NVMLError:
                return None  # NotSupported & co: the doctor says "unknown"

        modes: list[tuple[str, int | None, int | None]] = []
        for dev in devices:
            mode = ask(nv.nvmlDeviceGetMigMode, self._handles[dev.uuid])
            current, pending = mode if mode else (None, None)
            modes.append((dev.key, current, pending))
        driver = ask(nv.nvmlSystemGetDriverVersion)
        version = ask(nv.nvmlSystemGetNVMLVersion)
        cuda = ask(nv.nvmlSystemGetCudaDriverVersion)
        return NvmlInfo(
            driver_version=None if driver is None else _text(driver),
            nvml_version=None if version is None else _text(version),
            cuda_driver_version=None if cuda is None else int(cuda),
            devices=devices,
            mig_modes=tuple(modes),
        )

    def _shutdown(self) -> None:
        if self._initialized:
            self._initialized = False
            self._handles.clear()
            nv = self._lib()
            with contextlib.suppress(nv.NVMLError):  # nothing left to release
                nv.nvmlShutdown()

    # --- the async interface --------------------------------------------------------------------

    async def devices(self) -> tuple[GpuDevice, ...]:
        return await self._run(self._enumerate)

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        devs = tuple(devices)
        memory, processes, unknown, notes = await self._run(lambda: self.read_round(devs))
        return ProbeRound(
            backend=self.name,
            sampled_at=self.clock.now(),
            memory=tuple(memory),
            processes=tuple(processes),
            notes=tuple(notes),
            unknown_processes=tuple(unknown),
        )

    async def info(self) -> NvmlInfo:
        """Driver/NVML versions, devices and MIG modes (for ``offload-fsm doctor``)."""
        return await self._run(self._info)

    async def aclose(self) -> None:
        """Shut NVML down after every call still in flight; waits at most
        ``close_timeout_s`` (a hung call keeps the shutdown queued behind it)."""
        if self._closed:
            return
        worker = self._worker if self._worker_pid == self._getpid() else None
        try:
            if worker is not None:
                with anyio.move_on_after(self.close_timeout_s):
                    await self._run(self._shutdown, must_run=True)
        finally:
            self._closed = True
            if worker is not None:
                worker.jobs.put(None)
