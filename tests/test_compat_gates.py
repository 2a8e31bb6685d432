"""offload_fsm.compat.gates (offload_fsm's own gates, also exported by compat.miles) on the
fake ledger (this test process is the "engine")."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest

from offload_fsm.compat import gates as miles
from offload_fsm.core.errors import (
    BackendUnavailable,
    ConfigError,
    DeviceIdError,
    DeviceUnhealthy,
    GateTimeout,
    ProbeError,
)
from offload_fsm.probe.base import GIB, GpuDevice, ProbeRound
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus

ME = os.getpid()  # the tree rooted here holds the "engine" memory
COTENANT = 2**22 + 17  # above pid_max's default: never in this tree


@pytest.fixture
def gpus() -> FakeGpus:
    g = FakeGpus(make_devices(3))
    g.set_usage(ME, 0, int(2.5 * GIB))
    g.set_usage(ME, 1, 1 * GIB)
    g.set_usage(COTENANT, 0, 10 * GIB)
    return g


def residual(gpus: FakeGpus, ids: object, **kw: object) -> float | None:
    kw.setdefault("pid_namespace", "host")
    return miles.max_process_residual_gib(ME, ids, backend=FakeBackend(gpus), **kw)  # type: ignore[arg-type]


def test_residual_is_the_max_per_gpu_of_the_tree_never_the_sum(gpus: FakeGpus) -> None:
    assert residual(gpus, [0, 1]) == 2.5  # the co-tenant's 10 GiB on gpu0 is not ours
    assert residual(gpus, "1") == 1.0
    assert residual(gpus, [gpus.devices[1].uuid, 0]) == 2.5


def test_residual_is_none_when_it_cannot_be_measured(gpus: FakeGpus) -> None:
    assert residual(gpus, [0, 2]) is None  # no process of the tree listed on gpu2
    assert residual(gpus, [0], pid_namespace="foreign") is None  # container PID namespace
    gpus.hide_usage(ME)
    assert residual(gpus, [0]) is None
    gpus.hide_usage(ME, False)
    gpus.hide_processes(1)
    assert residual(gpus, [0, 1]) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gpus.set_usage(dead.pid, 0, GIB)  # the driver still lists it; the tree is gone
    assert (
        miles.max_process_residual_gib(
            dead.pid, [0], backend=FakeBackend(gpus), pid_namespace="host"
        )
        is None
    )


@pytest.mark.parametrize(
    "fault", [Fault.unavailable(), Fault.transient("Timeout")], ids=["unavailable", "transient"]
)
def test_residual_is_none_when_the_probe_fails(gpus: FakeGpus, fault: Fault) -> None:
    backend = FakeBackend(gpus, faults={1: fault})
    assert miles.max_process_residual_gib(ME, [0], backend=backend, pid_namespace="host") is None


def test_residual_raises_for_a_lost_gpu_and_for_bad_input(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus, faults={1: Fault.gpu_lost("gpu0")})
    with pytest.raises(DeviceUnhealthy):
        miles.max_process_residual_gib(ME, [0], backend=backend, pid_namespace="host")
    with pytest.raises(DeviceIdError, match="7"):
        residual(gpus, [0, 7])  # domain.md failure 3: a wrong index never skips silently
    with pytest.raises(DeviceIdError):
        residual(gpus, [])
    with pytest.raises(DeviceIdError, match="same GPU"):
        residual(gpus, [0, gpus.devices[0].uuid])
    with pytest.raises(ConfigError, match="root_pid"):
        miles.max_process_residual_gib(0, [0], backend=FakeBackend(gpus))


def test_max_used_is_whole_gpu_with_cotenants(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    assert miles.max_used_gib([0, 1], backend=backend) == 12.5
    assert miles.max_used_gib("1,2", backend=backend) == 1.0
    assert miles.max_used_gib([2], backend=backend) == 0.0  # measured 0 is a real 0


class UnknownUsed(FakeBackend):
    """A driver that cannot say how much is used on one GPU."""

    def __init__(self, gpus: FakeGpus, unknown: GpuDevice) -> None:
        super().__init__(gpus)
        self.unknown = unknown

    async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
        rnd = await super().probe(devices)
        memory = tuple(
            dataclasses.replace(m, used_bytes=None) if m.device == self.unknown else m
            for m in rnd.memory
        )
        return dataclasses.replace(rnd, memory=memory)


def test_max_used_raises_when_it_cannot_be_measured_never_zero(gpus: FakeGpus) -> None:
    with pytest.raises(ProbeError, match="unknown on gpu2"):
        miles.max_used_gib([0, 2], backend=UnknownUsed(gpus, gpus.devices[2]))
    with pytest.raises(BackendUnavailable):
        miles.max_used_gib([0], backend=FakeBackend(gpus, faults={1: Fault.unavailable()}))


def test_wait_for_residual_opens_when_the_cotenant_leaves(gpus: FakeGpus) -> None:
    gpus.step(COTENANT, 0, 0, after_s=0.2)
    t0 = time.monotonic()
    opened_at = miles.wait_for_residual([0, 1], 8.0, timeout_s=5.0, backend=FakeBackend(gpus))
    assert time.monotonic() - t0 >= 0.2
    assert opened_at == 2.5


def test_wait_for_residual_times_out_with_the_readings(gpus: FakeGpus) -> None:
    with pytest.raises(GateTimeout) as info:
        miles.wait_for_residual([0, 1], 8.0, timeout_s=0.2, backend=FakeBackend(gpus))
    assert info.value.readings == {
        gpus.devices[0].key: int(12.5 * GIB),
        gpus.devices[1].key: 1 * GIB,
    }
    assert info.value.threshold_bytes == 8 * GIB


def test_wait_for_residual_threshold_comes_from_the_miles_env(
    gpus: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILES_MAX_RESIDUAL_GPU_MEM_GB", "13")
    assert miles.wait_for_residual([0], timeout_s=1.0, backend=FakeBackend(gpus)) == 12.5
    monkeypatch.setenv("MILES_MAX_RESIDUAL_GPU_MEM_GB", "lots")
    with pytest.raises(ConfigError, match="MILES_MAX_RESIDUAL_GPU_MEM_GB"):
        miles.wait_for_residual([0], timeout_s=1.0, backend=FakeBackend(gpus))
    with pytest.raises(ConfigError, match="threshold_gib"):
        miles.wait_for_residual([0], -1.0, timeout_s=1.0, backend=FakeBackend(gpus))


def test_wait_for_engine_release_waits_for_a_release_that_returned_early(gpus: FakeGpus) -> None:
    gpus.set_usage(ME, 0, 30 * GIB)
    gpus.step(ME, 0, int(0.6 * GIB), after_s=0.2)  # the driver frees 0.2 s after "200 OK"
    t0 = time.monotonic()
    left = miles.wait_for_engine_release(
        ME, [0, 1], timeout_s=5.0, backend=FakeBackend(gpus), pid_namespace="host"
    )
    assert time.monotonic() - t0 >= 0.2
    assert left == 1.0  # max per GPU: gpu1 still holds 1 GiB of ours, gpu0 0.6


def test_wait_for_engine_release_times_out_when_memory_stays(gpus: FakeGpus) -> None:
    gpus.set_usage(ME, 0, 29 * GIB)  # started without a memory saver: nothing comes back
    with pytest.raises(GateTimeout) as info:
        miles.wait_for_engine_release(
            ME, [0], timeout_s=0.2, backend=FakeBackend(gpus), pid_namespace="host"
        )
    assert info.value.gate == "release"
    assert info.value.readings == {gpus.devices[0].key: 29 * GIB}


def test_wait_for_engine_release_unmeasured_passes_or_fails_as_asked(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    kw = {"backend": backend, "pid_namespace": "foreign", "timeout_s": 0.2}
    assert miles.wait_for_engine_release(ME, [0], **kw) is None  # type: ignore[arg-type]
    with pytest.raises(GateTimeout):
        miles.wait_for_engine_release(ME, [0], unmeasured="fail", **kw)  # type: ignore[arg-type]


async def test_async_forms_and_the_sync_forms_refusal_inside_a_loop(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    assert await miles.max_used_gib_async([0], backend=backend) == 12.5
    got = await miles.max_process_residual_gib_async(
        ME, [0, 1], backend=backend, pid_namespace="host"
    )
    assert got == 2.5
    with pytest.raises(ConfigError, match="_async"):
        miles.max_used_gib([0], backend=backend)


def test_default_backend_is_opened_once_and_closed(
    gpus: FakeGpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload_fsm.probe import select

    opened: list[FakeBackend] = []

    async def fake_open(name: str = "auto", **kw: object) -> FakeBackend:
        assert name == "auto"
        opened.append(FakeBackend(gpus))
        return opened[-1]

    monkeypatch.setattr(select, "open_backend", fake_open)
    assert miles.max_used_gib([0]) == 12.5
    assert miles.max_process_residual_gib(ME, [0], pid_namespace="host") == 2.5
    assert len(opened) == 1 and opened[0].rounds == 2
    miles.close_default_backend()
    assert opened[0].closed
    miles.close_default_backend()  # nothing open: a no-op
    assert miles.max_used_gib([1]) == 1.0
    assert len(opened) == 2
    miles.close_default_backend()


def test_gpus_on_several_nodes_need_node_qualified_ids() -> None:
    gpus = FakeGpus(make_devices(2, node="a") + make_devices(2, node="b"))
    a1, b1 = gpus.devices[1], gpus.devices[3]
    gpus.set_usage(COTENANT, b1, 6 * GIB)
    backend = FakeBackend(gpus)
    with pytest.raises(DeviceIdError, match="ambiguous"):
        miles.max_used_gib([1], backend=backend)  # gpu1 of node a, or of node b?
    assert miles.max_used_gib([a1, b1], backend=backend) == 6.0
    assert miles.max_used_gib([a1.key, b1.key], backend=backend) == 6.0
    assert miles.max_used_gib(f"{a1.key},{b1.key}", backend=backend) == 6.0
    with pytest.raises(DeviceIdError, match="same GPU"):
        miles.max_used_gib([b1, b1.key], backend=backend)
    stranger = make_devices(1, node="c")[0]
    with pytest.raises(DeviceIdError, match="not one of"):
        miles.max_used_gib([stranger], backend=backend)
