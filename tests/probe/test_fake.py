"""The scripted fake GPU model: timelines, late/never frees, co-tenants, faults, namespaces."""

from __future__ import annotations

import pytest

from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceIdError,
    DeviceUnhealthy,
    TransientProbeError,
)
from offload_fsm.probe.attribution import attribute, resident_max
from offload_fsm.probe.base import GIB, MIB, ProbeBackend
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import FakeDeviceSpec, make_devices, make_mixed_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def gpus(clock: VirtualClock) -> FakeGpus:
    return FakeGpus(make_devices(2), clock)


def test_existing_api_still_works(gpus: FakeGpus) -> None:
    gpus.set_usage(10, 0, 5 * GIB)
    gpus.set_usage(11, gpus.devices[1].uuid, 1 * GIB)
    assert gpus.usage(10, 0) == 5 * GIB
    assert gpus.used(0) == 5 * GIB
    gpus.add_source(lambda: [(12, gpus.devices[0].key, 2 * GIB)])
    assert gpus.used(gpus.devices[0]) == 7 * GIB
    gpus.hide_usage(10)
    rnd = gpus.snapshot(gpus.devices)
    assert {(p.pid, p.used_bytes) for p in rnd.processes_on(gpus.devices[0])} == {
        (10, None),
        (12, 2 * GIB),
    }
    gpus.set_usage(10, 0, 0)
    assert gpus.usage(10, 0) == 0
    with pytest.raises(DeviceIdError):
        gpus.device(7)
    with pytest.raises(ValueError):
        gpus.set_usage(1, 0, -1)


def test_ramp_frees_slowly_over_virtual_time(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.set_usage(1, 0, 40 * GIB)
    gpus.ramp(1, 0, 0, over_s=4.0, after_s=1.0)
    assert gpus.usage(1, 0) == 40 * GIB
    clock.advance(1.0)
    assert gpus.usage(1, 0) == 40 * GIB
    clock.advance(1.0)
    assert gpus.usage(1, 0) == 30 * GIB
    clock.advance(2.0)
    assert gpus.usage(1, 0) == 10 * GIB
    clock.advance(5.0)
    assert gpus.usage(1, 0) == 0
    assert gpus.snapshot(gpus.devices).processes == ()


def test_step_is_a_release_that_completes_late(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.set_usage(1, 0, 40 * GIB)
    gpus.step(1, 0, int(0.6 * GIB), after_s=2.5)
    clock.advance(2.4)
    assert gpus.used(0) == 40 * GIB
    clock.advance(0.1)
    assert gpus.used(0) == int(0.6 * GIB)


def test_slow_release_turns_set_usage_into_a_late_ramp(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.set_usage(7, 1, 20 * GIB)
    gpus.slow_release(7, delay_s=0.5, over_s=1.0)
    gpus.set_usage(7, 1, 0)  # what a simulated engine does on release
    assert gpus.usage(7, 1) == 20 * GIB
    clock.advance(1.0)
    assert gpus.usage(7, 1) == 10 * GIB
    clock.advance(0.5)
    assert gpus.usage(7, 1) == 0
    gpus.set_usage(7, 1, 3 * GIB)  # increases are immediate
    assert gpus.usage(7, 1) == 3 * GIB


def test_hold_is_memory_that_never_comes_back(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.set_usage(3, 0, 12 * GIB)
    gpus.hold(3, 0, 5 * GIB)
    gpus.set_usage(3, 0, 0)
    clock.advance(1e6)
    assert gpus.usage(3, 0) == 5 * GIB
    gpus.ramp(3, 0, 0, over_s=1.0)
    clock.advance(2.0)
    assert gpus.usage(3, 0) == 5 * GIB


def test_cotenant_arrives_and_leaves(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.cotenant(900, 0, 8 * GIB, arrive_s=1.0, leave_s=3.0)
    seen = []
    for _ in range(5):
        seen.append(gpus.used(0) // GIB)
        clock.advance(1.0)
    assert seen == [0, 8, 8, 0, 0]
    with pytest.raises(ValueError):
        gpus.cotenant(901, 0, 1, arrive_s=2.0, leave_s=1.0)


def test_schedule_holds_then_follows_keyframes(gpus: FakeGpus, clock: VirtualClock) -> None:
    gpus.set_usage(5, 0, 2 * GIB)
    gpus.schedule(5, 0, [(1.0, 10 * GIB), (3.0, 0)])
    assert gpus.usage(5, 0) == 2 * GIB  # held until the first keyframe
    clock.advance(1.0)
    assert gpus.usage(5, 0) == 10 * GIB
    clock.advance(1.0)
    assert gpus.usage(5, 0) == 5 * GIB
    with pytest.raises(ValueError):
        gpus.schedule(5, 0, [(2.0, 1), (1.0, 1)])
    with pytest.raises(ValueError):
        gpus.schedule(5, 0, [])


def test_mixed_models_and_reserves(clock: VirtualClock) -> None:
    specs = [
        FakeDeviceSpec("NVIDIA H200", 141 * GIB, 600 * MIB),
        FakeDeviceSpec("NVIDIA A100-SXM4-40GB", 40 * GIB, 400 * MIB),
    ]
    gpus = FakeGpus.from_specs(specs, clock)
    assert [d.name for d in gpus.devices] == ["NVIDIA H200", "NVIDIA A100-SXM4-40GB"]
    gpus.set_usage(1, 1, 10 * GIB)
    rnd = gpus.snapshot(gpus.devices)
    a100 = rnd.memory[1]
    assert a100.reserved_bytes == 400 * MIB
    assert a100.free_bytes == 40 * GIB - 400 * MIB - 10 * GIB
    assert len(make_mixed_devices(specs, node="n1")) == 2


def test_foreign_pid_namespace_hides_tree_pids(gpus: FakeGpus) -> None:
    gpus.set_usage(100, 0, 9 * GIB)
    gpus.foreign_pids(50_000)
    assert gpus.pid_namespace == "foreign"
    rnd = gpus.snapshot(gpus.devices[:1])
    assert [p.pid for p in rnd.processes] == [50_100]
    assert resident_max(rnd, {100}) is None
    report = attribute(rnd, {"e": {100}}, pid_namespace=gpus.pid_namespace)
    assert report.gpus[0].memory.used_bytes == 9 * GIB
    assert [p.owner for p in report.gpus[0].processes] == ["unknown"]


def test_hidden_process_list(gpus: FakeGpus) -> None:
    gpus.set_usage(1, 0, GIB)
    gpus.hide_processes(0)
    rnd = gpus.snapshot(gpus.devices)
    assert rnd.unknown_processes == (gpus.devices[0].key,)
    assert rnd.processes_on(gpus.devices[0]) == ()
    assert resident_max(rnd, {1}) is None


async def test_backend_is_a_probe_backend(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    assert isinstance(backend, ProbeBackend)
    assert await backend.devices() == gpus.devices
    await backend.aclose()
    assert backend.closed


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (Fault.transient(), TransientProbeError, "Timeout"),
        (Fault.transient("Unknown Error"), TransientProbeError, "Unknown"),
        (Fault.gpu_lost(), DeviceUnhealthy, "GPU is lost"),
        (Fault.reset_required("gpu1"), DeviceUnhealthy, "gpu1"),
        (Fault.unavailable(), BackendUnavailable, "Library"),
    ],
)
async def test_faults_fire_at_the_chosen_poll(
    gpus: FakeGpus, fault: Fault, error: type[Exception], text: str
) -> None:
    backend = FakeBackend(gpus, faults={2: fault})
    await backend.probe(gpus.devices)
    with pytest.raises(error, match=text) as info:
        await backend.probe(gpus.devices)
    assert "poll 2" in str(info.value)
    await backend.probe(gpus.devices)  # one-shot
    assert backend.rounds == 3


async def test_hang_blocks_on_the_injected_clock(gpus: FakeGpus, clock: VirtualClock) -> None:
    backend = FakeBackend(gpus)
    backend.inject(1, Fault.hang(30.0))
    rnd = await backend.probe(gpus.devices)
    assert clock.now() == pytest.approx(30.0)
    assert rnd.sampled_at == pytest.approx(30.0)
    with pytest.raises(ValueError, match="already happened"):
        backend.inject(1, Fault.transient())


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault.transient("GPU is lost")
    with pytest.raises(ValueError):
        Fault.hang(-1)


def test_snapshot_reads_sources_added_after_a_snapshot_and_sums_them_with_the_ledger(
    gpus: FakeGpus,
) -> None:
    a, b = gpus.devices
    gpus.set_usage(10, a, 1 * GIB)
    gpus.set_usage(11, b, 4 * GIB)
    first = gpus.snapshot([a])
    assert [(p.pid, p.used_bytes) for p in first.processes] == [(10, 1 * GIB)]
    # Sources: one for device a only, one for any device; a pid in both ledger and source
    # is summed, a zero row is not a process, rows for devices not asked about are left out.
    gpus.add_source(lambda: [(10, a.key, 2 * GIB), (12, a.key, 0)], devices=[a])
    gpus.add_source(lambda: [(13, a.key, 3 * GIB), (14, b.key, 5 * GIB)])
    again = gpus.snapshot([a])
    assert [(p.pid, p.used_bytes) for p in again.processes] == [(10, 3 * GIB), (13, 3 * GIB)]
    assert again.memory[0].used_bytes == 6 * GIB
    both = gpus.snapshot([b, a])
    assert [m.device for m in both.memory] == [b, a]
    assert [(p.device, p.pid) for p in both.processes] == [(b, 11), (b, 14), (a, 10), (a, 13)]
    gpus.set_usage(11, b, 0)  # leaves the ledger and every later snapshot
    assert [p.pid for p in gpus.snapshot([b]).processes] == [14]
    assert gpus.used(a) == 6 * GIB and gpus.used(b) == 5 * GIB


def test_a_reading_follows_what_the_driver_will_not_say_between_two_snapshots(
    gpus: FakeGpus,
) -> None:
    a = gpus.devices[0]
    gpus.set_usage(10, a, 1 * GIB)
    first = gpus.snapshot([a])
    again = gpus.snapshot([a])  # nothing changed: the same records are reused
    assert again.memory[0] is first.memory[0] and again.processes[0] is first.processes[0]
    gpus.hide_usage(10)
    assert [p.used_bytes for p in gpus.snapshot([a]).processes] == [None]
    gpus.hide_usage(10, False)
    gpus.foreign_pids(1000)
    assert [p.pid for p in gpus.snapshot([a]).processes] == [1010]
    gpus.foreign_pids(0)
    gpus.hide_processes(a)
    hidden = gpus.snapshot([a])
    assert (hidden.processes, hidden.unknown_processes) == ((), (a.key,))
    gpus.hide_processes(a, False)
    assert gpus.snapshot([a]).processes == first.processes


def test_add_process_reads_its_usage_at_every_snapshot_on_its_devices_only(
    gpus: FakeGpus,
) -> None:
    a, b = gpus.devices
    held = {"now": 2 * GIB}
    gpus.add_process(20, [a, a.key], lambda: held["now"])  # named twice: counted once
    gpus.set_usage(20, a, 1 * GIB)  # the same pid in the ledger: summed
    gpus.add_source(lambda: [(20, a.key, 1 * GIB)], devices=[a])
    assert [(p.pid, p.used_bytes) for p in gpus.snapshot([a, b]).processes] == [(20, 4 * GIB)]
    held["now"] = 0  # nothing held: not a process of its own
    assert [(p.pid, p.used_bytes) for p in gpus.snapshot([a]).processes] == [(20, 2 * GIB)]
    held["now"] = 5 * GIB
    assert gpus.used(a) == 7 * GIB and gpus.used(b) == 0
