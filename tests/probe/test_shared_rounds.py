"""SharedRounds: gates polling at one moment share a backend round; faults stay their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.core.errors import DeviceUnhealthy
from offload_fsm.probe.base import GIB, GpuDevice, ProbeRound, UnplacedProcess
from offload_fsm.probe.shared import SharedRounds, _Batch
from offload_fsm.sim.fake_backend import FakeBackend, Fault
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import VirtualClock
from offload_fsm.timing.deadlines import deadline

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def gpus(clock: VirtualClock) -> FakeGpus:
    gpus = FakeGpus(make_devices(4), clock)
    for i in range(4):
        gpus.set_usage(100 + i, i, (i + 1) * GIB)
    return gpus


async def probe_all(
    probe: SharedRounds, asks: Sequence[Sequence[GpuDevice]]
) -> list[ProbeRound | BaseException]:
    """Every ask at the same moment, each in its own task; answers (or errors) in order."""
    out: list[ProbeRound | BaseException] = [RuntimeError("no answer")] * len(asks)

    async def one(i: int) -> None:
        try:
            out[i] = await probe.probe(asks[i])
        except Exception as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(asks)):
            tg.start_soon(one, i)
    return out


def keys(devices: Sequence[GpuDevice]) -> list[str]:
    return [d.key for d in devices]


async def test_callers_at_one_moment_share_one_round(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    shared = SharedRounds(backend)
    d = gpus.devices
    asks = [(d[0], d[1]), (d[1],), (d[2], d[0])]
    answers = await probe_all(shared, asks)
    assert backend.rounds == 1
    assert shared.backend_rounds == 1 and shared.shared_answers == 2
    for ask, answer in zip(asks, answers):
        assert isinstance(answer, ProbeRound)
        assert keys(answer.devices) == keys(ask)  # the caller's GPUs, in its order
        assert {p.device.key for p in answer.processes} == set(keys(ask))
        for dev in ask:  # the same readings a round of its own would give
            assert answer.memory_of(dev).used_bytes == gpus.used(dev)
            assert [p.pid for p in answer.processes_on(dev)] == [100 + dev.index]


async def test_a_lone_caller_gets_a_round_of_its_own_gpus(gpus: FakeGpus) -> None:
    backend = FakeBackend(gpus)
    shared = SharedRounds(backend)
    answer = await shared.probe([gpus.devices[3], gpus.devices[1]])
    assert backend.rounds == 1 and shared.shared_answers == 0
    assert keys(answer.devices) == keys([gpus.devices[3], gpus.devices[1]])


async def test_nobody_joins_a_round_that_has_started(gpus: FakeGpus, clock: VirtualClock) -> None:
    """Freshness: a caller that asks while a round is running gets a round started later."""
    backend = FakeBackend(gpus, faults={2: Fault.hang(1.0)})
    shared = SharedRounds(backend)
    d = gpus.devices
    await shared.probe([d[0]])  # round 1
    answers: dict[str, ProbeRound] = {}

    async def first() -> None:
        answers["first"] = await shared.probe([d[0], d[1]])  # round 2 hangs 1 s

    async def later() -> None:
        await clock.sleep(0.5)  # round 2 is running by now
        gpus.set_usage(100, 0, 0)  # and memory moves after it started
        answers["later"] = await shared.probe([d[0]])

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(later)
    assert backend.rounds == 3
    assert answers["later"].memory_of(d[0]).used_bytes == 0  # its own, later round saw it


async def test_a_faulty_gpu_fails_only_its_own_caller(gpus: FakeGpus) -> None:
    """A shared round over a lost GPU fails; every caller retries alone, so only the gate on
    that GPU sees the error, and it names that GPU."""

    class LostGpu(FakeBackend):
        async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
            if any(dev.index == 2 for dev in devices):
                self.rounds += 1
                raise DeviceUnhealthy(f"{gpus.devices[2].label()}: NVML: GPU is lost")
            return await super().probe(devices)

    backend = LostGpu(gpus)
    shared = SharedRounds(backend)
    d = gpus.devices
    answers = await probe_all(shared, [(d[0],), (d[2],), (d[1], d[3])])
    assert isinstance(answers[0], ProbeRound) and keys(answers[0].devices) == keys([d[0]])
    assert isinstance(answers[1], DeviceUnhealthy) and d[2].label() in str(answers[1])
    assert isinstance(answers[2], ProbeRound) and keys(answers[2].devices) == keys([d[1], d[3]])
    assert backend.rounds == 4  # the shared round, then one each


@pytest.mark.parametrize("when", ["before its round", "during its round"])
async def test_a_cancelled_leader_leaves_its_joiners_to_retry(
    gpus: FakeGpus, clock: VirtualClock, when: str
) -> None:
    """The caller that runs the shared round is cancelled (its probe deadline hit a hung
    round, or earlier): the callers waiting on that round poll again on their own.

    Task "a" asks first and is cancelled; "b" asks at the same moment. On asyncio "a" always
    leads; trio may run "b" first, and then "b" leads and "a" merely leaves its batch."""
    leaders: list[str] = []

    class SharedRoundsHang(FakeBackend):
        async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
            if len(devices) > 1:  # the shared round (each caller asks for one GPU)
                leaders.append(anyio.get_current_task().name)
                self.rounds += 1
                await clock.sleep(10.0)
                raise AssertionError("a hung round answered")
            return await super().probe(devices)

    backend = SharedRoundsHang(gpus)
    shared = SharedRounds(backend)
    d = gpus.devices
    b_answer: list[tuple[float, ProbeRound]] = []
    a_cancelled = False

    async def a() -> None:
        nonlocal a_cancelled
        try:
            if when == "before its round":
                with anyio.CancelScope() as scope:
                    scope.cancel()  # cancelled at its first await: the joining window
                    await shared.probe([d[0]])
                a_cancelled = scope.cancelled_caught
            else:
                async with deadline(clock, 1.0):  # the shared round hangs 10 s
                    await shared.probe([d[0]])
        except TimeoutError:
            a_cancelled = True

    async def b() -> None:
        answer = await shared.probe([d[1]])
        b_answer.append((clock.now(), answer))

    with anyio.fail_after(10):  # real seconds: a caller left waiting hangs the test
        async with anyio.create_task_group() as tg:
            tg.start_soon(a, name="a")
            tg.start_soon(b, name="b")
    assert a_cancelled
    ((b_at, b_round),) = b_answer
    assert keys(b_round.devices) == keys([d[1]])
    if anyio_backend_name() == "asyncio":
        assert leaders == (["a"] if when == "during its round" else [])
    if leaders == ["a"]:  # b waited on a's hung round, then polled alone when a gave up
        assert b_at == 1.0 and backend.rounds == 2
    elif leaders == ["b"]:  # a joined b's hung round and gave up; b's fault made b poll alone
        assert b_at == 10.0 and backend.rounds == 2
    else:  # nobody shared: b polled alone at once
        assert b_at == 0.0 and backend.rounds == 1


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


async def test_callers_on_other_nodes_do_not_share(clock: VirtualClock) -> None:
    a, b = FakeGpus(make_devices(2, node="a"), clock), FakeGpus(make_devices(2, node="b"), clock)

    class TwoNodes(FakeBackend):
        async def probe(self, devices: Sequence[GpuDevice]) -> ProbeRound:
            self.rounds += 1
            nodes = {dev.node for dev in devices}
            assert len(nodes) == 1, f"a round across nodes {nodes}"
            return (a if nodes == {"a"} else b).snapshot(devices)

    backend = TwoNodes(a)
    shared = SharedRounds(backend)
    answers = await probe_all(
        shared, [(a.devices[0],), (b.devices[0],), (a.devices[1],), (b.devices[1],)]
    )
    assert all(isinstance(x, ProbeRound) for x in answers)
    assert backend.rounds == 2  # one per node


def test_a_cut_keeps_every_field_of_the_round(gpus: FakeGpus) -> None:
    """The cut builds a new ProbeRound: a field added to ProbeRound must be carried over."""
    d = gpus.devices
    full = dataclasses.replace(
        gpus.snapshot(d),
        per_gpu_processes=False,
        notes=("v1 memory semantics",),
        unknown_processes=(d[1].key, d[3].key),
        unplaced=(UnplacedProcess(7, GIB),),
    )
    batch = _Batch(d)
    batch.join(d[:1])
    batch.finish(full)
    cut = batch.cut((d[3], d[2]))
    for field in dataclasses.fields(ProbeRound):
        if field.name not in ("memory", "processes", "unknown_processes"):
            assert getattr(cut, field.name) == getattr(full, field.name), field.name
    assert cut.unknown_processes == (d[3].key,)
    assert keys(cut.devices) == keys((d[3], d[2]))
    assert batch.cut(d) is full
