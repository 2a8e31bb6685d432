"""Fault matrix, cancellation: cancel at EVERY await point of release and wake, not one example.

A run of the operation is made once with :class:`~tests.reliability.rig.Checkpoints` counting
its await points (event emits, probe rounds, engine calls, clock sleeps: N of them); then, for
every k in 1..N, a fresh run is cancelled at the k-th. Each run must leave every engine in
the documented state for the state it was in when cancelled (gated -> slept; releasing or
waking -> failed; an operation that had just finished keeps its result), the log must say
why, and the log must be complete and replay clean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from offload_fsm.core.lifecycle import State
from offload_fsm.probe.base import GIB
from offload_fsm.sim.sim_model import FaultPlan
from tests.reliability.rig import AFTER_CANCEL, Checkpoints, Rig, check_log, open_rig

CANCEL_REASONS = {
    State.RELEASING: "cancelled during release: the engine's memory state is unknown",
    State.WAKING: "cancelled during wake: the engine's memory state is unknown",
    State.GATED: "wake cancelled while gated",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Callable[[Rig], Awaitable[None]]
    op: Callable[[Rig], Awaitable[None]]
    engines: tuple[str, ...]
    done: tuple[State, ...]  # the engines' states when the operation completes


async def _one_active(rig: Rig) -> None:
    await rig.add_sim("a", [0], faults=FaultPlan().on("release", "late_release", delay_s=0.3))


async def _one_slept_behind_a_cotenant(rig: Rig) -> None:
    await rig.add_sim("a", [1], initial=State.SLEPT)
    assert rig.gpus is not None
    rig.gpus.cotenant(31337, 1, 12 * GIB, arrive_s=0.0, leave_s=0.2)  # the gate waits a bit


async def _two_slept(rig: Rig) -> None:
    await rig.add_sim("a", [1], initial=State.SLEPT)
    await rig.add_sim("b", [2], initial=State.SLEPT)
    assert rig.gpus is not None
    rig.gpus.cotenant(31337, 2, 12 * GIB, arrive_s=0.0, leave_s=0.1)


async def _two_active(rig: Rig) -> None:
    await rig.add_sim("a", [0], faults=FaultPlan().on("release", "late_release", delay_s=0.2))
    await rig.add_sim("b", [3])


SCENARIOS = [
    Scenario("release", _one_active, lambda r: r.orch.release("a"), ("a",), (State.SLEPT,)),
    Scenario(
        "wake", _one_slept_behind_a_cotenant, lambda r: r.orch.wake("a"), ("a",), (State.ACTIVE,)
    ),
    Scenario(
        "group wake",
        _two_slept,
        lambda r: r.orch.wake_many(["a", "b"]),
        ("a", "b"),
        (State.ACTIVE, State.ACTIVE),
    ),
    Scenario(
        "group release",
        _two_active,
        lambda r: r.orch.release_many(["a", "b"]),
        ("a", "b"),
        (State.SLEPT, State.SLEPT),
    ),
]


async def _run(tmp: Path, sc: Scenario, cancel_at: int | None) -> tuple[Rig, Checkpoints, bool]:
    points = Checkpoints(cancel_at=cancel_at)
    async with open_rig(tmp, points=points) as rig:
        await sc.setup(rig)
        with anyio.CancelScope() as scope:
            points.scope, points.armed = scope, True
            await sc.op(rig)
        points.armed = False
    return rig, points, scope.cancelled_caught


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
async def test_cancel_at_every_await_point(tmp_path: Path, sc: Scenario) -> None:
    rig, points, _ = await _run(tmp_path / "uncancelled", sc, None)
    assert tuple(rig.orch.state(e) for e in sc.engines) == sc.done
    check_log(rig)
    n = len(points.hits)
    kinds = Counter(h.label.split()[0].split(".")[-1] for h in points.hits)
    # The matrix covers every kind of await point an operation has.
    assert n >= 10 and kinds["emit"] and kinds["probe"] and kinds["sleep"], kinds

    outcomes: Counter[str] = Counter()
    missed = 0
    for k in range(1, n + 1):
        rig, points, caught = await _run(tmp_path / f"k{k}", sc, k)
        hit = points.cancelled
        if hit is None:  # trio shuffles its run queue: this run had fewer await points
            missed += 1
            check_log(rig)
            continue
        assert hit.n == k
        check = check_log(rig)  # complete, replayable, and the gate never opened over
        for eid in sc.engines:
            before = hit.states[eid]
            after = rig.orch.state(eid)
            assert after is AFTER_CANCEL[before], (k, hit.label, eid, before, after)
            outcomes[f"{before.value}->{after.value}"] += 1
            if before in CANCEL_REASONS:
                assert caught, (k, hit.label)  # the cancellation reached the caller
                assert check.last_reason(eid) == CANCEL_REASONS[before], (k, hit.label)
    assert missed <= n // 10, (missed, n)
    # Every documented cancellation outcome of this operation was reached.
    expected = {
        "release": {"releasing->failed", "slept->slept"},
        "wake": {"gated->slept", "waking->failed", "active->active"},
        "group wake": {"gated->slept", "waking->failed", "active->active"},
        "group release": {"releasing->failed", "slept->slept"},
    }[sc.name]
    assert expected <= set(outcomes), outcomes
