"""On a real GPU: the probe sees an allocation, its release (within one poll after the
release call returns), the CUDA context left behind, and attributes the memory to a spawned
grandchild from the parent's pid; NVML and nvidia-smi agree within 16 MiB.

Skipped where ``pynvml.nvmlInit()`` fails. ``OFFLOAD_FSM_TEST_GPU`` picks the GPU (physical
index, UUID or bus id; default 0), ``OFFLOAD_FSM_TEST_GIB`` the allocation (default 24).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pynvml
import pytest

from offload_fsm.probe.attribution import attribute, resident_max
from offload_fsm.probe.base import GIB, MIB, GpuDevice
from offload_fsm.probe.devices import resolve_device
from offload_fsm.probe.nvml import NvmlBackend
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace
from offload_fsm.probe.retry import RetryingProbe
from offload_fsm.probe.smi import SmiBackend
from offload_fsm.sim.standin_proc import StandIn


def _nvml_error() -> str | None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    pynvml.nvmlShutdown()
    return None


NVML_ERROR = _nvml_error()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        NVML_ERROR is not None, reason=f"needs a GPU: nvmlInit failed ({NVML_ERROR})"
    ),
    pytest.mark.timeout(600),
]
ALLOC_GIB = float(os.environ.get("OFFLOAD_FSM_TEST_GIB", "24"))
AGREE = 16 * MIB


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # one engine process per module; the probe's trio path is CPU-tested


@pytest.fixture(scope="module")
def gpu() -> GpuDevice:
    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            bus = pynvml.nvmlDeviceGetPciInfo(h).busId
            devices.append(
                GpuDevice(
                    i,
                    pynvml.nvmlDeviceGetUUID(h),
                    bus.decode() if isinstance(bus, bytes) else bus,
                    pynvml.nvmlDeviceGetName(h),
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return resolve_device(os.environ.get("OFFLOAD_FSM_TEST_GPU", "0"), devices)


@pytest.fixture(scope="module")
def engine(gpu: GpuDevice) -> Iterator[StandIn]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu.uuid)
    standin = StandIn(env=env)
    try:
        yield standin
    finally:
        standin.close()


async def test_allocation_release_context_and_grandchild_attribution(
    gpu: GpuDevice, engine: StandIn
) -> None:
    # In a foreign PID namespace per-process figures are unknown by design: the
    # whole-device checks still run, the per-process ones only where PIDs are the host's.
    host = detect_pid_namespace() == "host"
    backend = NvmlBackend()
    try:
        (dev,) = [d for d in await backend.devices() if d.uuid == gpu.uuid]
        table = ProcessTable.snapshot()
        tree = table.tree(engine.parent_pid)
        assert engine.child_pid in tree and engine.parent_pid in tree
        assert engine.child_pid != engine.parent_pid

        idle = await backend.probe([dev])
        idle_used = idle.memory[0].used_bytes
        assert idle_used is not None
        context = resident_max(idle, tree)
        if host:
            assert context is not None, "the engine's CUDA context is not visible"
            assert 100 * MIB <= context <= 2 * GIB
            assert engine.parent_pid not in {p.pid for p in idle.processes_on(dev)}
        else:
            assert context is None  # unknown, never 0

        engine.command(f"alloc {ALLOC_GIB}")
        held = await backend.probe([dev])
        held_used = held.memory[0].used_bytes
        assert held_used is not None and held_used >= idle_used + ALLOC_GIB * GIB - 64 * MIB
        if host:
            resident = resident_max(held, tree)
            assert resident is not None and context is not None
            assert resident >= context + ALLOC_GIB * GIB - 64 * MIB
            report = attribute(held, {"standin": tree}, pid_namespace="host")
            owners = {p.pid: p.owner for p in report.gpus[0].processes}
            assert owners[engine.child_pid] == "standin"  # the grandchild, from the parent

        engine.command("free")
        after = await backend.probe([dev])  # the first poll after the call returned
        after_used = after.memory[0].used_bytes
        assert after_used is not None
        assert after_used <= idle_used + 256 * MIB, (
            f"release not seen at once: {(after_used - idle_used) / GIB:.2f} GiB above idle"
        )
        if host:
            left = resident_max(after, tree)
            assert left is not None and context is not None
            assert left <= context + 256 * MIB
            assert left >= 100 * MIB  # the CUDA context stays behind
    finally:
        await backend.aclose()


async def test_v2_memory_semantics(gpu: GpuDevice) -> None:
    backend = NvmlBackend()
    try:
        (dev,) = [d for d in await backend.devices() if d.uuid == gpu.uuid]
        mem = (await backend.probe([dev])).memory[0]
        assert mem.semantics == "v2"
        assert mem.reserved_bytes is not None and mem.reserved_bytes > 0
        assert None not in (mem.total_bytes, mem.used_bytes, mem.free_bytes)
        parts = mem.used_bytes + mem.free_bytes + mem.reserved_bytes  # type: ignore[operator]
        assert abs(parts - mem.total_bytes) <= 64 * MIB  # type: ignore[operator]
    finally:
        await backend.aclose()


async def test_nvml_and_smi_agree(gpu: GpuDevice, engine: StandIn) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.fail("nvidia-smi is not on PATH on this GPU machine")
    nvml = RetryingProbe(NvmlBackend())
    smi = SmiBackend()
    try:
        (dev,) = [d for d in await nvml.devices() if d.uuid == gpu.uuid]
        (smi_dev,) = [d for d in await smi.devices() if d.uuid == gpu.uuid]
        assert (smi_dev.index, smi_dev.bus_id) == (dev.index, dev.bus_id)
        engine.command("alloc 4")
        before = (await nvml.probe([dev])).memory[0]
        via_smi = await smi.probe([dev])
        after = (await nvml.probe([dev])).memory[0]
        s = via_smi.memory[0]
        assert s.used_bytes is not None and before.used_bytes is not None
        assert after.used_bytes is not None
        gap = min(abs(s.used_bytes - before.used_bytes), abs(s.used_bytes - after.used_bytes))
        assert gap <= AGREE, f"NVML and nvidia-smi differ by {gap / MIB:.1f} MiB"
        assert s.total_bytes is not None and before.total_bytes is not None
        assert abs(s.total_bytes - before.total_bytes) <= AGREE
        if s.reserved_bytes is not None and before.reserved_bytes is not None:
            assert abs(s.reserved_bytes - before.reserved_bytes) <= AGREE
        smi_child = [p for p in via_smi.processes_on(dev) if p.pid == engine.child_pid]
        if detect_pid_namespace() == "host":
            assert smi_child and smi_child[0].used_bytes is not None
    finally:
        engine.command("free")
        await nvml.aclose()


async def test_torch_memory_saver_pause_and_resume(gpu: GpuDevice, engine: StandIn) -> None:
    """As SGLang releases memory: optional, where torch_memory_saver is installed."""
    pytest.importorskip("torch_memory_saver", reason="torch_memory_saver is not installed")
    backend = NvmlBackend()
    try:
        (dev,) = [d for d in await backend.devices() if d.uuid == gpu.uuid]

        async def used() -> int:
            value = (await backend.probe([dev])).memory[0].used_bytes
            assert value is not None
            return value

        base = await used()
        engine.command("tms_alloc 8")
        assert await used() >= base + 8 * GIB - 64 * MIB
        engine.command("pause")
        assert await used() <= base + 256 * MIB  # seen before the call returned
        engine.command("resume")
        assert await used() >= base + 8 * GIB - 64 * MIB
    finally:
        engine.command("free")
        await backend.aclose()
