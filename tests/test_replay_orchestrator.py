"""Logs written by the real orchestrator replay clean, and replay agrees with its states.

The dual topology on fake GPUs: P1 rolls out while P2 trains, then they swap, for a few
steps, each swap releasing and waking concurrently (the wakes wait on the gate). Then the
failure paths the orchestrator takes on purpose (a release that leaves 29 GiB behind, a
co-tenant that times the wake gate out) must replay without a violation too: failing loudly
is legal; waking anyway is not.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from offload_fsm.core.errors import GateTimeout
from offload_fsm.core.lifecycle import State
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import Event
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.replay import replay_path
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.testing.log_builder import write_events
from offload_fsm.timing.clock import VirtualClock
from tests.ledger_engine import LedgerEngine

TOPOLOGY = {  # engine -> (pipeline, role, GPUs, footprint, awake first)
    "p1-train": ("p1", "trainer", [0], 30 * GIB, False),
    "p1-infer": ("p1", "engine", [0, 1, 2], 20 * GIB, True),
    "p2-train": ("p2", "trainer", [3], 30 * GIB, True),
    "p2-infer": ("p2", "engine", [1, 2, 3], 20 * GIB, False),
}


async def _run(tmp_path: Path, steps: int, *, incident: bool) -> tuple[Path, dict[str, State]]:
    clock = VirtualClock()
    gpus = FakeGpus(make_devices(4), clock)
    bus = EventBus()
    sub = bus.subscribe("log", capacity=100_000)
    events: list[Event] = []
    orch = Orchestrator(
        probe=FakeBackend(gpus),
        recorder=Recorder(bus, "orch-dual", clock),
        config=OrchestratorConfig(
            threshold_bytes=7 * GIB,
            wake_gate=GatePolicy(deadline_s=3.0),
            release_gate=GatePolicy(deadline_s=2.0),
            resume_gate=GatePolicy(deadline_s=2.0, settle_samples=1),
            call_timeout_s=3.0,
        ),
        clock=clock,
    )

    async def collect() -> None:
        async for event in sub:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await orch.start_run(command="tests")
        adapters = {}
        for pid, (eid, (pipe, role, devs, footprint, awake)) in enumerate(TOPOLOGY.items()):
            eng = LedgerEngine(
                gpus, clock, 100 + pid, [gpus.devices[i] for i in devs], footprint=footprint
            )
            if not awake:
                eng.hold(int(0.6 * GIB))
            adapters[eid] = eng
            await orch.register(
                EngineSpec(
                    eid,
                    eng,
                    tuple(eng.devices),
                    pipeline_id=pipe,
                    role=role,
                    initial=State.ACTIVE if awake else State.SLEPT,
                    pids=lambda eng=eng: frozenset({eng.pid}),  # type: ignore[misc]
                )
            )
        awake = {e for e, spec in TOPOLOGY.items() if spec[4]}
        for _ in range(steps):
            asleep = set(TOPOLOGY) - awake
            async with anyio.create_task_group() as swap:
                swap.start_soon(orch.release_many, sorted(awake))
                swap.start_soon(orch.wake_many, sorted(asleep))
            awake = asleep
        if incident:
            # p1-infer's release returns but 29 GiB stay (no memory saver): the release
            # gate times out and the engine fails; the trainer's wake then times out.
            active_infer = "p1-infer" if "p1-infer" in awake else "p2-infer"
            adapters[active_infer].release_keeps = 29 * GIB
            with pytest.raises(GateTimeout):
                await orch.release(active_infer)
            gpus.set_usage(999, 3, 12 * GIB)  # and a co-tenant on GPU 3
            sleeper = next(e for e in ("p1-train", "p2-train") if e not in awake)
            if sleeper == "p2-train":
                with pytest.raises(GateTimeout):
                    await orch.wake(sleeper)
        await orch.finish_run("ok")
        final = {e: orch.state(e) for e in TOPOLOGY}
        bus.close()
    return write_events(tmp_path / "orch.jsonl", events), final


@pytest.mark.parametrize("incident", [False, True])
async def test_orchestrator_logs_replay_clean(tmp_path: Path, incident: bool) -> None:
    log, final = await _run(tmp_path, steps=3, incident=incident)
    result = replay_path(log)
    assert result.ok, [str(v) for v in result.violations]
    assert not result.truncated
    assert {e: t.state for e, t in result.engines.items()} == {e: s.value for e, s in final.items()}
    waits = sum(len(t.gate_waits) for t in result.engines.values())
    assert waits == sum(t.cycles for t in result.engines.values()) > 0
    if incident:
        assert "failed" in {t.state for t in result.engines.values()}
        assert any(k.startswith("gate_timed_out:release") for k in result.failures)
