from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.core.errors import (
    BackendUnavailable,
    EngineCallTimeout,
    EngineError,
    GateTimeout,
    GateUnmeasurable,
    IllegalTransition,
)
from offload_fsm.core.lifecycle import State
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import (
    AttributionReport,
    Event,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    Transition,
)
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.probe.retry import RetryingProbe
from offload_fsm.probe.shared import SharedRounds
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import VirtualClock
from tests.ledger_engine import LedgerEngine

THRESHOLD = 8 * GIB


@dataclass
class World:
    clock: VirtualClock
    gpus: FakeGpus
    orch: Orchestrator
    events: list[Event]
    tg: anyio.abc.TaskGroup

    def engine(self, eid: str, pid: int, devs: list[int], **kw: object) -> LedgerEngine:
        return LedgerEngine(
            self.gpus, self.clock, pid, [self.gpus.devices[i] for i in devs], tg=self.tg, **kw
        )  # type: ignore[arg-type]

    async def add(self, eid: str, adapter: LedgerEngine, **kw: object) -> None:
        await self.orch.register(
            EngineSpec(
                eid, adapter, tuple(adapter.devices), pids=lambda: frozenset({adapter.pid}), **kw
            )  # type: ignore[arg-type]
        )

    async def drain(self) -> None:
        """Let the collector catch up with everything published so far."""
        last = self.orch.recorder.last
        for _ in range(1000):
            if last is None or (self.events and self.events[-1].seq >= last.seq):
                return
            await anyio.lowlevel.checkpoint()
        raise AssertionError("collector did not catch up")

    def kinds(self, cls: type[Event], engine: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if isinstance(e, cls) and (engine is None or e.engine_id == engine)
        ]

    def path(self, engine: str) -> list[str]:
        return [e.dst for e in self.kinds(Transition, engine)]  # type: ignore[attr-defined]


class BrokenProbe:
    name = "broken"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def devices(self) -> tuple[GpuDevice, ...]:
        raise self.error

    async def probe(self, devices: object) -> ProbeRound:
        raise self.error

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = VirtualClock()
    gpus = FakeGpus(make_devices(4), clock)
    bus = EventBus()
    events: list[Event] = []
    sub = bus.subscribe("test", capacity=100_000)
    rec = Recorder(bus, "test-run", clock)
    config = OrchestratorConfig(
        threshold_bytes=THRESHOLD,
        wake_gate=GatePolicy(deadline_s=5.0),
        release_gate=GatePolicy(deadline_s=2.0),
        resume_gate=GatePolicy(deadline_s=2.0, settle_samples=1),
        call_timeout_s=3.0,
        pid_namespace=gpus.pid_namespace,
    )
    orch = Orchestrator(probe=FakeBackend(gpus), recorder=rec, config=config, clock=clock)

    async def collect() -> None:
        async for event in sub:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        yield World(clock, gpus, orch, events, tg)
        bus.close()


async def test_full_cycle_gates_every_transition(world: World) -> None:
    eng = world.engine("e0", 100, [0])
    await world.add("e0", eng)
    await world.orch.release("e0", ["weights", "kv_cache"])
    assert world.orch.state("e0") is State.SLEPT
    assert world.gpus.used(0) == int(0.6 * GIB)
    await world.orch.wake("e0")
    assert world.orch.state("e0") is State.ACTIVE
    assert eng.calls == ["prepare_release", "release", "resume", "finish_wake"]
    await world.drain()
    assert world.path("e0") == ["releasing", "slept", "gated", "waking", "active"]
    gates = {e.gate for e in world.kinds(GateDecision, "e0") if e.opened}  # type: ignore[attr-defined]
    assert gates == {"release", "wake", "resume"}
    reports = world.kinds(AttributionReport, "e0")
    assert reports and reports[0].context == "after_release"  # type: ignore[attr-defined]


async def test_release_returned_but_memory_stayed_fails_loudly(world: World) -> None:
    """domain.md failure 1: release said 200, memory was not freed (no memory saver)."""
    eng = world.engine("e0", 100, [0], release_keeps=29 * GIB)
    await world.add("e0", eng)
    with pytest.raises(GateTimeout) as info:
        await world.orch.release("e0")
    assert info.value.gate == "release"
    assert world.orch.state("e0") is State.FAILED
    assert "release failed" in (world.orch.engine("e0").lifecycle.reason or "")


async def test_double_resume_refused_before_any_engine_call(world: World) -> None:
    """domain.md failure 2: two code paths both woke the trainer."""
    eng = world.engine("trainer", 100, [0])
    await world.add("trainer", eng, role="trainer")
    with pytest.raises(IllegalTransition):
        await world.orch.wake("trainer")
    assert eng.calls == []
    assert world.orch.state("trainer") is State.ACTIVE


async def test_cotenant_keeps_gate_closed_and_is_named(world: World) -> None:
    eng = world.engine("e0", 100, [1], footprint=30 * GIB)
    await world.add("e0", eng, initial=State.SLEPT)
    eng.hold(int(0.6 * GIB))
    world.gpus.set_usage(999, 1, 12 * GIB)  # a co-tenant nobody registered
    with pytest.raises(GateTimeout) as info:
        await world.orch.wake("e0")
    assert world.orch.state("e0") is State.SLEPT
    assert eng.calls == []
    key = world.gpus.devices[1].key
    assert info.value.readings[key] == 12 * GIB + int(0.6 * GIB)
    await world.drain()
    report = [r for r in world.kinds(AttributionReport, "e0") if r.context == "wake_timeout"]
    owners = {(p.pid, p.owner) for p in report[0].processes}  # type: ignore[attr-defined]
    assert (999, "foreign") in owners and (100, "e0") in owners
    assert world.kinds(GateTimedOut, "e0")


async def test_probe_missing_fails_closed(world: World) -> None:
    """domain.md failure 3: no nvidia-smi -> 'sleep 3 s and go'. Here: the gate stays shut."""
    eng = world.engine("e0", 100, [0])
    await world.add("e0", eng, initial=State.SLEPT)
    world.orch.probe = BrokenProbe(BackendUnavailable("NVML library not found"))
    with pytest.raises(GateUnmeasurable, match="failing closed"):
        await world.orch.wake("e0")
    assert world.orch.state("e0") is State.SLEPT
    assert eng.calls == []


async def test_fail_open_is_loud(world: World) -> None:
    eng = world.engine("e0", 100, [0])
    await world.add("e0", eng, initial=State.SLEPT)
    world.orch.probe = BrokenProbe(BackendUnavailable("NVML library not found"))
    object.__setattr__(world.orch.config.wake_gate, "fail_open", True)
    await world.orch.wake("e0")
    assert world.orch.state("e0") is State.ACTIVE
    await world.drain()
    loud = world.kinds(GateFailOpen, "e0")
    assert loud and "NVML library not found" in loud[0].error  # type: ignore[attr-defined]
    opened = [e for e in world.kinds(Transition, "e0") if e.dst == "waking"]  # type: ignore[attr-defined]
    assert "FAIL-OPEN" in (opened[0].reason or "")  # type: ignore[attr-defined]


async def test_engine_dies_mid_wake(world: World) -> None:
    eng = world.engine("e0", 100, [0], fail_on={"resume"})
    await world.add("e0", eng, initial=State.SLEPT)
    eng.hold(int(0.6 * GIB))
    with pytest.raises(EngineError, match="resume"):
        await world.orch.wake("e0")
    assert world.orch.state("e0") is State.FAILED


async def test_hung_adapter_call_times_out(world: World) -> None:
    eng = world.engine("e0", 100, [0], hang_on={"release"})
    await world.add("e0", eng)
    with pytest.raises(EngineCallTimeout):
        await world.orch.release("e0")
    assert world.orch.state("e0") is State.FAILED


async def test_silent_noop_resume_is_caught(world: World) -> None:
    eng = world.engine("e0", 100, [0], resume_noop=True)
    await world.add("e0", eng)
    await world.orch.release("e0")
    with pytest.raises(GateTimeout) as info:
        await world.orch.wake("e0")
    assert info.value.gate == "resume"
    assert world.orch.state("e0") is State.FAILED


async def test_late_release_waits_for_settled_memory(world: World) -> None:
    """A release that returns early: the release gate waits for memory to really drop."""
    eng = world.engine("e0", 100, [0], release_delay_s=0.5)
    await world.add("e0", eng)
    t0 = world.clock.now()
    await world.orch.release("e0")
    assert world.clock.now() - t0 >= 0.5
    assert world.orch.state("e0") is State.SLEPT


async def test_cancel_while_gated_returns_to_slept(world: World) -> None:
    eng = world.engine("e0", 100, [0])
    await world.add("e0", eng, initial=State.SLEPT)
    world.gpus.set_usage(999, 0, 20 * GIB)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(world.orch.wake, "e0")
            await world.clock.sleep(0.1)
            assert world.orch.state("e0") is State.GATED
            scope.cancel()
    assert world.orch.state("e0") is State.SLEPT
    await world.drain()
    assert world.path("e0")[-1] == "slept"


async def test_cancel_during_release_fails_engine(world: World) -> None:
    eng = world.engine("e0", 100, [0], hang_on={"release"})
    await world.add("e0", eng)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(world.orch.release, "e0")
            await world.clock.sleep(0.1)
            scope.cancel()
    assert world.orch.state("e0") is State.FAILED
    assert "cancelled during release" in (world.orch.engine("e0").lifecycle.reason or "")


async def test_two_engines_on_one_gpu_never_both_wake(world: World) -> None:
    a = world.engine("a", 100, [2], footprint=30 * GIB)
    b = world.engine("b", 200, [2], footprint=30 * GIB)
    await world.add("a", a, initial=State.SLEPT)
    await world.add("b", b, initial=State.SLEPT)
    a.hold(0)
    b.hold(0)

    async def wake_then_sleep(eid: str) -> None:
        await world.orch.wake(eid)
        await world.clock.sleep(0.2)
        await world.orch.release(eid)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wake_then_sleep, "a")
        tg.start_soon(wake_then_sleep, "b")
    awake: set[str] = set()
    await world.drain()
    for e in world.kinds(Transition):
        if e.dst in ("waking", "active", "releasing"):  # type: ignore[attr-defined]
            awake.add(e.engine_id or "")
        else:
            awake.discard(e.engine_id or "")
        assert len(awake) <= 1, awake


async def test_group_release_cancels_the_rest_on_first_failure(world: World) -> None:
    good = world.engine("good", 100, [0], release_delay_s=1.0)
    # bad fails while good waits in its release gate, whichever of them starts first
    bad = world.engine("bad", 200, [1], fail_on={"release"}, fail_after_s=0.1)
    await world.add("good", good)
    await world.add("bad", bad)
    with pytest.raises(EngineError, match="injected"):
        await world.orch.release_many(["good", "bad"])
    assert world.orch.state("bad") is State.FAILED
    assert world.orch.state("good") is State.FAILED  # cancelled mid-release: state unknown


async def test_state_query_that_raises_never_skips_the_gate(world: World) -> None:
    """domain.md failure 3: a state query raised (wrong engine index) and the memory gate was
    skipped silently. Here an engine whose GPU the probe does not know: the wake gate raises,
    the engine stays slept, and no resume call is made."""
    eng = world.engine("e0", 100, [0])
    await world.add("e0", eng, initial=State.SLEPT)
    stranger = make_devices(1, node="elsewhere")[0]  # not on this machine's probe
    world.orch.engine("e0").spec = dataclasses.replace(  # type: ignore[misc]
        world.orch.engine("e0").spec, devices=(stranger,)
    )
    t0 = world.clock.now()
    with pytest.raises(GateUnmeasurable, match="does not exist"):
        await world.orch.wake("e0")
    assert world.clock.now() - t0 < 0.1  # a wrong id is not retried for the whole deadline
    assert world.orch.state("e0") is State.SLEPT
    assert eng.calls == []
    await world.drain()
    back = [e for e in world.kinds(Transition, "e0") if e.dst == "slept"]  # type: ignore[attr-defined]
    assert back and "failing closed" in (back[-1].reason or "")  # type: ignore[attr-defined]


def test_probe_rounds_are_shared_by_default_only_where_a_round_is_not_cheap() -> None:
    """share_probe_rounds=None: NVML-like rounds are shared, the in-memory fake's are not
    (cheaper than batching them); True and False force it either way."""
    gpus = FakeGpus(make_devices(1), VirtualClock())

    class CostlyBackend(FakeBackend):
        cheap_rounds = False  # as NVML, nvidia-smi or a remote round

    def rounds_of(backend: ProbeBackend, share: bool | None) -> object:
        config = OrchestratorConfig(
            threshold_bytes=GIB, pid_namespace="host", share_probe_rounds=share
        )
        bus = EventBus()
        return Orchestrator(probe=backend, recorder=Recorder(bus, "t"), config=config).rounds

    fake, costly = FakeBackend(gpus), CostlyBackend(gpus)
    assert rounds_of(fake, None) is fake
    assert isinstance(rounds_of(costly, None), SharedRounds)
    assert isinstance(rounds_of(RetryingProbe(costly), None), SharedRounds)
    assert not isinstance(rounds_of(RetryingProbe(fake), None), SharedRounds)
    assert isinstance(rounds_of(fake, True), SharedRounds)
    assert rounds_of(costly, False) is costly


async def test_gates_polling_together_share_probe_rounds(
    world: World, anyio_backend_name: str
) -> None:
    """Four engines released together: their release gates poll in lockstep and share each
    round (OrchestratorConfig.share_probe_rounds); without sharing, one round per gate poll."""
    backend = world.orch.probe
    assert isinstance(backend, FakeBackend)
    world.orch.config = dataclasses.replace(world.orch.config, share_probe_rounds=True)
    world.orch.probe = backend  # forced on: the fake's own rounds are not shared by default
    ids = [f"e{i}" for i in range(4)]
    for i, eid in enumerate(ids):
        await world.add(eid, world.engine(eid, 100 + i, [i]))

    async def release_all() -> int:
        before = backend.rounds
        await world.orch.release_many(ids)
        assert all(world.orch.state(e) is State.SLEPT for e in ids)
        return backend.rounds - before

    shared_rounds = await release_all()
    await world.orch.wake_many(ids)
    world.orch.config = dataclasses.replace(world.orch.config, share_probe_rounds=False)
    world.orch.probe = backend  # the gates poll it directly from now on
    alone_rounds = await release_all()
    # Per engine: a residual reading before its release, then 3 settle rounds of its gate.
    assert alone_rounds == 4 * (1 + 3)
    # On asyncio the virtual clock wakes same-instant sleepers in one pass: all four gates
    # poll together. On trio it wakes them one at a time (in order), so fewer of them meet.
    assert (
        shared_rounds == 1 + 3 if anyio_backend_name == "asyncio" else shared_rounds < alone_rounds
    )
    await world.drain()
    opened = [e for e in world.kinds(GateDecision) if e.gate == "release" and e.opened]  # type: ignore[attr-defined]
    assert sorted(e.engine_id for e in opened) == sorted(ids * 2)
