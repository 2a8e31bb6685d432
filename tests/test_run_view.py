"""RunView.wait_until: a waiter that names its engines re-checks only on events about them."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from offload_fsm.drivers.view import RunView
from offload_fsm.events.kinds import EngineRegistered, Event, PhaseChanged, Transition


def registered(engine_id: str) -> EngineRegistered:
    return EngineRegistered(
        seq=0,
        ts=0.0,
        run_id="r",
        engine_id=engine_id,
        role="engine",
        adapter="sim",
        initial_state="active",
    )


def moved(engine_id: str, dst: str) -> Transition:
    return Transition(
        seq=0, ts=0.0, run_id="r", engine_id=engine_id, src="active", dst=dst, trigger="t"
    )


async def settle() -> None:
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_a_watching_waiter_rechecks_only_for_its_engines() -> None:
    view = RunView()
    for e in ("a", "b", "c"):
        view.apply(registered(e))
    checks: list[str] = []

    def both_slept(v: RunView) -> bool:
        checks.append("check")
        return all(v.engines[e].state == "slept" for e in ("a", "b"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(view.wait_until, both_slept, ("a", "b"))
        await settle()
        assert len(checks) == 1
        events: list[Event] = [
            moved("c", "slept"),
            PhaseChanged(seq=0, ts=0.0, run_id="r", pipeline_id="p", step=1, phase="train"),
        ]
        for event in events:  # nothing about a or b: no re-check
            view.apply(event)
        await settle()
        assert len(checks) == 1
        view.apply(moved("a", "slept"))
        await settle()
        assert len(checks) == 2  # re-checked, still waiting for b
        view.apply(moved("b", "slept"))
    assert len(checks) == 3
    assert view._watchers == {}  # nothing left behind


async def test_an_unkeyed_waiter_rechecks_on_every_event() -> None:
    view = RunView()
    seen: list[int] = []

    def two_phases(v: RunView) -> bool:
        seen.append(v.events_seen)
        return v.events_seen >= 2

    async with anyio.create_task_group() as tg:
        tg.start_soon(view.wait_until, two_phases)
        await settle()
        for step in (1, 2):
            view.apply(
                PhaseChanged(seq=0, ts=0.0, run_id="r", pipeline_id="p", step=step, phase="rollout")
            )
            await settle()
    assert seen == [0, 1, 2]


async def test_watching_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="watch names no engine"):
        await RunView().wait_until(lambda v: False, ())


async def test_follow_applies_every_event_in_order_and_calls_on_event() -> None:
    from offload_fsm.events.bus import EventBus

    bus = EventBus()
    sub = bus.subscribe("view", capacity=1000)
    view = RunView()
    seen: list[int] = []
    for e in ("a", "b"):
        await bus.publish(registered(e))
    for i in range(100):  # more than one batch
        await bus.publish(moved("a" if i % 2 else "b", "slept" if i < 99 else "gated"))
    bus.close()
    await view.follow(sub, lambda event: seen.append(len(seen)))
    assert view.events_seen == len(seen) == 102
    assert (view.engines["a"].transitions, view.engines["b"].transitions) == (50, 50)
    assert (view.engines["a"].state, view.engines["b"].state) == ("gated", "slept")


def test_a_subclass_of_an_event_kind_updates_the_view_as_that_kind() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class TaggedTransition(Transition):
        tag: str = "x"

    view = RunView()
    view.apply(registered("a"))
    view.apply(TaggedTransition(seq=0, ts=0.0, run_id="r", engine_id="a", src="active",
                                dst="releasing", trigger="release"))  # fmt: skip
    assert (view.engines["a"].state, view.engines["a"].transitions) == ("releasing", 1)
    view.apply(PhaseChanged(seq=0, ts=0.0, run_id="r", pipeline_id="p", step=3, phase="train"))
    assert view.phases == {"p": (3, "train")}


def test_a_view_subscription_leaves_out_only_what_no_view_nor_printer_reads() -> None:
    from offload_fsm.events.kinds import (
        AdapterCallFailed,
        AdapterCallFinished,
        AdapterCallStarted,
        GateDecision,
        GateTimedOut,
        MemorySample,
    )

    base = {"seq": 0, "ts": 0.0, "run_id": "r", "engine_id": "a"}
    decision = {
        "passed": False, "opened": False, "observed_bytes": (1,), "limit_bytes": 0,
        "settle_count": 0, "settle_required": 3, "attempt": 1, "elapsed_s": 0.0,
    }  # fmt: skip
    quiet = [
        AdapterCallStarted(**base, call="release"),
        AdapterCallFinished(**base, call="release", elapsed_s=0.1),
        MemorySample(**base, backend="fake", used_bytes=1, free_bytes=1, total_bytes=2),
        GateDecision(**base, gate="release", **decision),
        GateDecision(**base, gate="resume", **decision),
    ]
    shown = [
        registered("a"),
        moved("a", "slept"),
        GateDecision(**base, gate="wake", **decision),
        GateTimedOut(**base, gate="release", last_bytes=(1,), limit_bytes=0, elapsed_s=1.0),
        AdapterCallFailed(**base, call="release", elapsed_s=0.1, error_type="E", error="x"),
        PhaseChanged(seq=0, ts=0.0, run_id="r", pipeline_id="p", step=1, phase="train"),
    ]
    assert [RunView.wants(e) for e in quiet] == [False] * len(quiet)
    assert [RunView.wants(e) for e in shown] == [True] * len(shown)
