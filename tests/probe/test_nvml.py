"""NVML backend against an injected pynvml-like module that raises real NVMLError classes."""

from __future__ import annotations

import threading
import time

import anyio
import pynvml
import pytest

from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceIdError,
    DeviceUnhealthy,
    ProbeError,
    ProbeTimeout,
    TransientProbeError,
)
from offload_fsm.probe.attribution import resident_by_gpu
from offload_fsm.probe.base import GpuDevice
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.retry import RetryingProbe, RetryPolicy
from tests.probe.fake_nvml import GIB, MIB, FakeNvml, h200s, wait_until


@pytest.fixture
def nv() -> FakeNvml:
    gpus = h200s(2)
    gpus[0].processes = {4242: 30 * GIB, 777: 2 * GIB}
    gpus[1].processes = {4243: None}  # the driver will not say
    return FakeNvml(gpus)


async def test_devices_are_enumerated_with_identity(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    assert [d.index for d in devices] == [0, 1]
    assert devices[0].uuid == nv.gpus[0].uuid
    assert devices[0].bus_id == "00000000:18:00.0"  # bytes from the PCI struct, decoded
    assert devices[1].name == "NVIDIA H200"
    assert devices[1].total_bytes == 141 * GIB
    await backend.aclose()


async def test_round_has_v2_memory_and_processes(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    rnd = await backend.probe(devices)
    m0 = rnd.memory_of(devices[0])
    assert m0.semantics == "v2"
    assert m0.used_bytes == 32 * GIB  # the reserve is not in "used"
    assert m0.reserved_bytes == 600 * MIB
    assert m0.free_bytes == 141 * GIB - 32 * GIB - 600 * MIB
    assert {(p.pid, p.used_bytes) for p in rnd.processes_on(devices[0])} == {
        (4242, 30 * GIB),
        (777, 2 * GIB),
    }
    # usedGpuMemory None stays unknown, never 0
    assert [(p.pid, p.used_bytes) for p in rnd.processes_on(devices[1])] == [(4243, None)]
    assert resident_by_gpu(rnd, {4243}) == {devices[0].key: None, devices[1].key: None}
    assert rnd.notes == ()
    await backend.aclose()


async def test_one_dedicated_thread_and_one_hop_per_round(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    for _ in range(3):
        await backend.probe(devices)
    assert backend.hops == 4  # devices() + 3 rounds: not one hop per NVML call
    threads = nv.thread_ids()
    assert len(threads) == 1
    assert threading.get_ident() not in threads  # never on the event loop's thread
    assert nv.inits == 1  # lazily, once
    await backend.aclose()
    assert nv.shutdowns == 1


async def test_v1_fallback_is_said_in_the_notes() -> None:
    gpus = h200s(1)
    gpus[0].processes = {1: 1 * GIB}
    nv = FakeNvml(gpus, has_memory_v2=False)
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    rnd = await backend.probe(devices)
    mem = rnd.memory[0]
    assert mem.semantics == "v1"
    assert mem.used_bytes == 1 * GIB + 600 * MIB  # v1 used includes the reserve
    assert mem.reserved_bytes is None
    assert any("v1" in n for n in rnd.notes)
    await backend.probe(devices)
    # v2 is not asked again once it is known to be missing
    assert [n for n, _ in nv.calls].count("nvmlDeviceGetMemoryInfo_v2") == 1
    await backend.aclose()


async def test_processes_fall_back_from_v3_to_v2_once() -> None:
    gpus = h200s(1)
    gpus[0].processes = {9: 5 * GIB}
    nv = FakeNvml(gpus, has_processes_v3=False)
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    for _ in range(2):
        rnd = await backend.probe(devices)
        assert [(p.pid, p.used_bytes) for p in rnd.processes] == [(9, 5 * GIB)]
    names = [n for n, _ in nv.calls]
    assert names.count("nvmlDeviceGetComputeRunningProcesses_v3") == 1
    assert names.count("nvmlDeviceGetComputeRunningProcesses_v2") == 2
    await backend.aclose()


@pytest.mark.parametrize("error", [pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission])
async def test_unlistable_processes_are_unknown_not_empty(
    nv: FakeNvml, error: type[pynvml.NVMLError]
) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.fail("nvmlDeviceGetComputeRunningProcesses_v3", error())
    rnd = await backend.probe(devices)
    assert rnd.unknown_processes == (devices[0].key,)
    assert not rnd.processes_known(devices[0])
    assert rnd.processes_known(devices[1])
    assert rnd.memory_of(devices[0]).used_bytes == 32 * GIB  # whole-device stays valid
    assert resident_by_gpu(rnd, {4242})[devices[0].key] is None
    await backend.aclose()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pynvml.NVMLError_Timeout, TransientProbeError),
        (pynvml.NVMLError_Unknown, TransientProbeError),
        (pynvml.NVMLError_InsufficientSize, TransientProbeError),
        (pynvml.NVMLError_GpuIsLost, DeviceUnhealthy),
        (pynvml.NVMLError_ResetRequired, DeviceUnhealthy),
        (pynvml.NVMLError_DriverNotLoaded, BackendUnavailable),
        (pynvml.NVMLError_Memory, ProbeError),
    ],
)
async def test_errors_are_mapped_at_the_boundary(
    nv: FakeNvml, error: type[pynvml.NVMLError], expected: type[ProbeError]
) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.fail("nvmlDeviceGetMemoryInfo_v2", error())
    with pytest.raises(ProbeError) as info:
        await backend.probe(devices)
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, pynvml.NVMLError)
    assert "gpu0" in str(info.value)
    # the next round works again (nothing was left half-initialised)
    rnd = await backend.probe(devices)
    assert rnd.memory[0].used_bytes == 32 * GIB
    await backend.aclose()


@pytest.mark.parametrize(
    "error", [pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded]
)
async def test_init_failure_is_backend_unavailable(error: type[pynvml.NVMLError]) -> None:
    backend = NvmlBackend(FakeNvml([], init_error=error()))
    with pytest.raises(BackendUnavailable, match="NVML cannot be initialised"):
        await backend.devices()
    await backend.aclose()


async def test_uninitialized_mid_round_reinitialises(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.fail("nvmlDeviceGetMemoryInfo_v2", pynvml.NVMLError_Uninitialized())
    with pytest.raises(TransientProbeError):
        await backend.probe(devices)
    await backend.probe(devices)
    assert nv.inits == 2
    await backend.aclose()


async def test_unknown_device_is_a_device_id_error(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv)
    stranger = GpuDevice(5, "GPU-deadbeef", "00000000:99:00.0", "x")
    with pytest.raises(DeviceIdError, match="GPU-deadbeef"):
        await backend.probe([stranger])
    remote = GpuDevice(0, nv.gpus[0].uuid + "x", "00000000:18:00.0", "x", node="node-b")
    with pytest.raises(DeviceIdError, match="node-b"):
        await backend.probe([remote])
    await backend.aclose()


async def test_hung_call_is_abandoned_and_shutdown_waits_for_it(nv: FakeNvml) -> None:
    backend = NvmlBackend(nv, close_timeout_s=0.05)
    devices = await backend.devices()
    retrying = RetryingProbe(backend, policy=RetryPolicy(attempts=1, call_timeout_s=0.2))
    nv.block("nvmlDeviceGetMemoryInfo_v2")
    start = time.monotonic()
    with pytest.raises(ProbeTimeout, match=r"did not answer within 0\.2 s"):
        await retrying.probe(devices)
    assert time.monotonic() - start < 2.0
    assert nv.entered.is_set()  # the driver call is still in flight
    await backend.aclose()
    assert nv.shutdowns == 0  # never shut down under a call in flight
    nv.release()
    assert await anyio.to_thread.run_sync(wait_until, lambda: nv.shutdowns == 1)
    names = [n for n, _ in nv.calls]
    assert names.index("nvmlShutdown") > names.index("nvmlDeviceGetMemoryInfo_v2")
    with pytest.raises(BackendUnavailable, match="closed"):
        await backend.probe(devices)


async def test_reinit_after_fork(nv: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    first = nv.thread_ids()
    monkeypatch.setattr(backend, "_getpid", lambda: 999_999)  # as seen in a forked child
    await backend.probe(devices)
    assert nv.inits == 2
    assert len(nv.thread_ids()) == 2
    assert nv.thread_ids() - first  # a new worker thread in the "child"
    await backend.aclose()


async def test_info_reports_versions_and_mig(nv: FakeNvml) -> None:
    nv.gpus[1].mig = None  # NotSupported
    backend = NvmlBackend(nv)
    info = await backend.info()
    assert info.driver_version == "580.159.04"
    assert info.cuda_driver_version == 13000
    assert [m[1:] for m in info.mig_modes] == [(0, 0), (None, None)]
    await backend.aclose()


async def test_nvml_errors_are_unhashable_and_still_mapped() -> None:
    # nvidia-ml-py defines __eq__ without __hash__: the backend must never hash them.
    with pytest.raises(TypeError):
        hash(pynvml.NVMLError_Timeout())
    nv = FakeNvml(h200s(1))
    backend = NvmlBackend(nv)
    devices = await backend.devices()
    nv.fail("nvmlDeviceGetHandleByUUID", pynvml.NVMLError_Timeout())
    backend._handles.clear()  # force a lookup by UUID
    with pytest.raises(TransientProbeError, match="Timeout"):
        await backend.probe(devices)
    await backend.aclose()
