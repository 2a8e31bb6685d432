"""The group wake gate decides, then emits: no wake can open on a GPU between a group's final
blocker check and its members' ``gate_open`` (issue 16, item 5).

A group gate that opens emits one decision per member. Each emit may wait (a full blocking
subscriber, a slow publish); a competing wake of an engine that shares a member's GPU runs in
that wait. It must find the member already awake (a blocker), not still gated.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from offload_fsm.core.errors import GateTimeout
from offload_fsm.core.lifecycle import OCCUPYING_STATES, State
from offload_fsm.events.bus import EventBus, Recorder
from offload_fsm.events.kinds import Event, GateDecision, Transition
from offload_fsm.orchestrator.orchestrator import EngineSpec, Orchestrator, OrchestratorConfig
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.fake_backend import FakeBackend
from offload_fsm.sim.fake_devices import make_devices
from offload_fsm.sim.fake_gpus import FakeGpus
from offload_fsm.timing.clock import VirtualClock
from tests.ledger_engine import LedgerEngine


class CompetingRecorder(Recorder):
    """At the ``inject_at``-th member decision of a group gate, before emitting it, wakes
    ``competitor`` and lets virtual time run long enough for its gate to open and its resume
    to finish, if nothing stops them."""

    def __init__(self, bus: EventBus, clock: VirtualClock, inject_at: int) -> None:
        super().__init__(bus, "race", clock)
        self.vclock = clock
        self.inject_at = inject_at
        self.member_decisions = 0
        self.wake_competitor: Any = None  # set by the test: starts the competing wake

    async def emit(self, kind: type[Any], **fields: Any) -> Any:
        if kind is GateDecision and str(fields.get("detail", "")).startswith("group gate of"):
            if self.member_decisions == self.inject_at:
                self.wake_competitor()
                await self.vclock.sleep(1.0)  # the competitor's gate settles in milliseconds
            self.member_decisions += 1
        return await super().emit(kind, **fields)


@pytest.mark.parametrize("inject_at", [0, 1])
async def test_no_wake_opens_on_a_gpu_while_a_group_emits_its_decisions(inject_at: int) -> None:
    clock = VirtualClock()
    gpus = FakeGpus(make_devices(2), clock)
    bus = EventBus()
    events: list[Event] = []
    sub = bus.subscribe("test", capacity=100_000)
    recorder = CompetingRecorder(bus, clock, inject_at)
    config = OrchestratorConfig(
        threshold_bytes=8 * GIB,
        wake_gate=GatePolicy(deadline_s=5.0),
        release_gate=GatePolicy(deadline_s=2.0),
        resume_gate=GatePolicy(deadline_s=2.0, settle_samples=1),
        call_timeout_s=3.0,
        pid_namespace=gpus.pid_namespace,
    )
    orch = Orchestrator(probe=FakeBackend(gpus), recorder=recorder, config=config, clock=clock)
    outcome: list[str] = []

    async def collect() -> None:
        async for event in sub:
            events.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        # a1 and b share GPU 0 (not in one share group: never awake together); a2 is on GPU 1.
        layout = {"a1": (100, 0), "a2": (200, 1), "b": (300, 0)}
        for eid, (pid, gpu) in layout.items():
            eng = LedgerEngine(gpus, clock, pid, [gpus.devices[gpu]], tg=tg, footprint=30 * GIB)
            await orch.register(
                EngineSpec(
                    eid,
                    eng,
                    (gpus.devices[gpu],),
                    pids=lambda e=eng: frozenset({e.pid}),
                    initial=State.SLEPT,
                )
            )
            eng.hold(0)

        async def competing_wake() -> None:
            try:
                await orch.wake("b")
                outcome.append("b woke")
            except GateTimeout:
                outcome.append("b refused")

        recorder.wake_competitor = lambda: tg.start_soon(competing_wake)
        await orch.wake_many(["a1", "a2"])
        both = {orch.state("a1"), orch.state("b")} <= OCCUPYING_STATES
        assert not both, f"a1 {orch.state('a1')} and b {orch.state('b')} awake on one GPU"
        await clock.sleep(10.0)  # b's wake ends: refused at its deadline (a1 is awake)
        bus.close()

    assert recorder.member_decisions == 2
    assert outcome == ["b refused"]
    awake: set[str] = set()
    for e in events:  # the log, too, never shows a1 and b awake together
        if isinstance(e, Transition) and e.engine_id in ("a1", "b"):
            if e.dst in ("waking", "active", "releasing"):
                awake.add(e.engine_id)
            else:
                awake.discard(e.engine_id)
            assert len(awake) <= 1, awake
