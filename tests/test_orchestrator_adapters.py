"""The orchestrator driving the real adapters: the simulated SGLang server (a real process
tree, attribution by walking /proc from the launcher pid) and the in-process SimEngine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from offload_fsm.core.errors import EngineUnreachable, GateTimeout
from offload_fsm.core.lifecycle import State
from offload_fsm.engines.sglang import SGLangAdapter
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import AttributionReport, Event
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.sim.sim_model import FaultPlan, Footprint
from offload_fsm.sim.sim_proc import ledger_dir_source
from offload_fsm.sim.sim_server import SimServerProcess
from offload_fsm.testing import World, assert_replays_clean
from offload_fsm.timing.clock import Clock, RealClock

FP = Footprint.gib(weights=2, kv_cache=4, cuda_graph=0.5)
DEVICES = make_devices(2)


@dataclass
class Rig:
    gpus: FakeGpus
    orch: Orchestrator
    events: list[Event]


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger")


@pytest.fixture(scope="module")
def server(ledger_dir: Path) -> Iterator[SimServerProcess]:
    with SimServerProcess.start(ledger_dir, [d.key for d in DEVICES], FP) as srv:
        yield srv


async def _reset(srv: SimServerProcess, plan: FaultPlan | None = None) -> None:
    async with httpx.AsyncClient(base_url=srv.url, trust_env=False) as client:
        (await client.post("/_sim/reset")).raise_for_status()
        if plan is not None:
            (await client.post("/_sim/faults", json=plan.to_json())).raise_for_status()


async def _rig(gpus: FakeGpus, clock: Clock) -> AsyncIterator[Rig]:
    bus = EventBus()
    sub = bus.subscribe("test", capacity=100_000)
    config = OrchestratorConfig(
        threshold_bytes=8 * GIB,
        wake_gate=GatePolicy(deadline_s=3.0),
        release_gate=GatePolicy(deadline_s=2.0),
        resume_gate=GatePolicy(deadline_s=0.6, settle_samples=1),
        call_timeout_s=3.0,
        drain_timeout_s=1.0,
        pid_namespace=gpus.pid_namespace,  # the fake ledger holds pids as we see them
    )
    orch = Orchestrator(
        probe=FakeBackend(gpus), recorder=Recorder(bus, "t", clock), config=config, clock=clock
    )
    events: list[Event] = []

    async def collect() -> None:
        async for event in sub:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        yield Rig(gpus, orch, events)
        bus.close()


@pytest.fixture
async def http_rig(ledger_dir: Path) -> AsyncIterator[Rig]:
    gpus = FakeGpus(DEVICES)
    gpus.add_source(ledger_dir_source(ledger_dir))
    async for rig in _rig(gpus, RealClock()):
        yield rig


async def _register_http(rig: Rig, srv: SimServerProcess) -> SGLangAdapter:
    adapter = SGLangAdapter("sg0", srv.url, process_root=srv.pid, timeout_s=2.0)
    # No pids function: the orchestrator walks the real /proc from the launcher's pid.
    await rig.orch.register(EngineSpec("sg0", adapter, DEVICES))
    return adapter


async def test_release_and_wake_through_http_with_attribution_from_proc(
    server: SimServerProcess, http_rig: Rig
) -> None:
    await _reset(server)
    adapter = await _register_http(http_rig, server)
    await http_rig.orch.release("sg0")
    assert http_rig.orch.state("sg0") is State.SLEPT
    assert http_rig.gpus.used(0) == FP.context
    await http_rig.orch.wake("sg0")
    assert http_rig.orch.state("sg0") is State.ACTIVE
    assert http_rig.gpus.used(1) == FP.total
    await anyio.sleep(0.05)
    reports = [e for e in http_rig.events if isinstance(e, AttributionReport)]
    owners = {(p.pid, p.owner) for r in reports for p in r.processes}
    assert (server.scheduler_pid, "sg0") in owners  # the child, found from the launcher
    await adapter.aclose()


async def test_late_release_is_waited_for_by_the_release_gate(
    server: SimServerProcess, http_rig: Rig
) -> None:
    await _reset(server, FaultPlan().on("release", "late_release", delay_s=0.4))
    adapter = await _register_http(http_rig, server)
    t0 = time.monotonic()
    await http_rig.orch.release("sg0")
    assert time.monotonic() - t0 >= 0.4  # slept only once the memory really left
    assert http_rig.orch.state("sg0") is State.SLEPT
    await adapter.aclose()


async def test_noop_resume_fails_the_resume_gate(server: SimServerProcess, http_rig: Rig) -> None:
    await _reset(server, FaultPlan().on("resume", "noop_resume"))
    adapter = await _register_http(http_rig, server)
    await http_rig.orch.release("sg0")
    with pytest.raises(GateTimeout) as info:
        await http_rig.orch.wake("sg0")
    assert info.value.gate == "resume"
    assert http_rig.orch.state("sg0") is State.FAILED
    await adapter.aclose()


# The in-process SimEngine, in the testing kit's virtual-time world (offload_fsm.testing).


async def test_in_process_sim_engine_cycle_in_virtual_time(fsm_world: World) -> None:
    engine = await fsm_world.sglang("s0", gpus=[0, 1], footprint=FP)
    await fsm_world.orchestrator.release("s0", ["weights", "kv_cache", "cuda_graph"])
    await fsm_world.orchestrator.wake("s0")
    assert fsm_world.state("s0") is State.ACTIVE
    assert engine.calls == {"prepare_release": 1, "release": 1, "resume": 1, "finish_wake": 1}
    assert fsm_world.gpus.used(0) == FP.total
    assert_replays_clean(await fsm_world.finish())


async def test_in_process_no_release_and_crash_mid_wake(fsm_world: World) -> None:
    engine = await fsm_world.sglang("s0", gpus=[0, 1], footprint=FP)
    fsm_world.inject("stuck_memory", engine="s0", nth=1)
    with pytest.raises(GateTimeout) as info:
        await fsm_world.orchestrator.release("s0")
    assert info.value.gate == "release"
    assert fsm_world.state("s0") is State.FAILED
    assert engine.released_tags  # it believes it released: only measuring caught it

    # s0 still holds GPU 1: free it by hand so s1's wake gate can open.
    engine.kill()
    await fsm_world.sglang("s1", gpus=[1], footprint=FP)
    fsm_world.inject("crash", engine="s1", call="resume", delay_s=0.13)
    await fsm_world.orchestrator.release("s1")
    with pytest.raises(EngineUnreachable):
        await fsm_world.orchestrator.wake("s1")
    assert fsm_world.state("s1") is State.FAILED
