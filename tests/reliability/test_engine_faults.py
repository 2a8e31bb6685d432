"""Fault matrix, engine rows: what an engine can do wrong during a release or a wake.

Every row runs in virtual time on the simulated GPUs and asserts the four promises: the gate
never opened over the threshold (from the log, and from the ledger's truth at each wake), the
engine ends in a documented state, a typed error or event names the cause, and the event log
is complete and replayable (:func:`tests.reliability.rig.check_log`).

Layout of most rows: engine ``a`` is active on GPU 0 and misbehaves; engine ``b`` sleeps on
the same GPU and tries to wake afterwards, so a fault that leaves memory behind must keep
``b``'s wake gate shut and the attribution report must name ``a``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offload_fsm.core.errors import (
    EngineCallTimeout,
    EngineError,
    EngineUnreachable,
    GateTimeout,
    IllegalTransition,
)
from offload_fsm.core.lifecycle import Evidence, State
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    AttributionReport,
    GateDecision,
    GateTimedOut,
)
from offload_fsm.orchestrator.orchestrator import HISTORY_LEN
from offload_fsm.probe.base import GIB
from offload_fsm.settings import GatePolicy
from offload_fsm.sim.sim_model import FaultPlan
from tests.reliability.rig import ENGINE_FP, LogCheck, Rig, check_log, open_rig

LEFT_BEHIND = int(ENGINE_FP.total * 0.5)  # roughly what a partial release keeps


async def _pair(rig: Rig, faults: FaultPlan) -> None:
    await rig.add_sim("a", [0], faults=faults)
    await rig.add_sim("b", [0], initial=State.SLEPT)


async def _neighbour_stays_shut(rig: Rig) -> GateTimeout:
    """``b`` must not wake onto what ``a`` left behind; the report must name ``a``."""
    with pytest.raises(GateTimeout) as info:
        await rig.orch.wake("b")
    assert info.value.gate == "wake"
    assert rig.orch.state("b") is State.SLEPT
    assert rig.sims["b"].calls["resume"] == 0  # never called: no wake onto used memory
    assert info.value.report is not None
    owners = {p.owner for g in info.value.report.gpus for p in g.processes}
    assert "a" in owners, owners
    return info.value


def _named_in_report(check: LogCheck, engine: str, context: str, owner: str) -> None:
    reports = [r for r in check.of(AttributionReport, engine) if r.context == context]
    assert reports, f"no {context} report for {engine}"
    assert owner in {p.owner for p in reports[-1].processes}


async def test_late_release_is_waited_for(tmp_path: Path) -> None:
    """The release call returns before memory drops: slept only once it really dropped."""
    async with open_rig(tmp_path) as rig:
        await _pair(rig, FaultPlan().on("release", "late_release", delay_s=1.2))
        t0 = rig.clock.now()
        await rig.orch.release("a")
        assert rig.orch.state("a") is State.SLEPT
        assert rig.clock.now() - t0 >= 1.2
        await rig.orch.wake("b")
        assert rig.orch.state("b") is State.ACTIVE
    check = check_log(rig)
    release = [d for d in check.of(GateDecision, "a") if d.gate == "release"]
    assert not release[0].passed and release[-1].opened  # it saw the memory, then its drop


@pytest.mark.parametrize("kind", ["partial_release", "no_release"])
async def test_release_that_frees_too_little_fails_loudly(tmp_path: Path, kind: str) -> None:
    async with open_rig(tmp_path) as rig:
        await _pair(rig, FaultPlan().on("release", kind))
        with pytest.raises(GateTimeout) as info:
            await rig.orch.release("a")
        assert info.value.gate == "release"
        assert rig.orch.state("a") is State.FAILED
        assert rig.sims["a"].released_tags  # the engine believes it released
        await _neighbour_stays_shut(rig)
    check = check_log(rig)
    assert "release failed: GateTimeout" in check.last_reason("a")
    assert [t.gate for t in check.of(GateTimedOut, "a")] == ["release"]
    _named_in_report(check, "a", "release_timeout", "a")
    _named_in_report(check, "b", "wake_timeout", "a")


@pytest.mark.parametrize(
    ("call", "kind", "error", "error_type"),
    [
        ("release", "error", EngineError, "EngineError"),  # HTTP 500
        ("prepare_release", "unreachable", EngineUnreachable, "EngineUnreachable"),  # refused
        ("release", "hang", EngineCallTimeout, "EngineCallTimeout"),  # no answer, ever
    ],
)
async def test_release_call_failure_fails_the_engine_and_keeps_its_memory_guarded(
    tmp_path: Path, call: str, kind: str, error: type[Exception], error_type: str
) -> None:
    async with open_rig(tmp_path) as rig:
        await _pair(rig, FaultPlan().on(call, kind))
        with pytest.raises(error):
            await rig.orch.release("a")
        assert rig.orch.state("a") is State.FAILED
        assert rig.sims["a"].resident_bytes() == ENGINE_FP.total  # nothing freed
        await _neighbour_stays_shut(rig)
    check = check_log(rig)
    failed = check.of(AdapterCallFailed, "a")
    assert [(f.call, f.error_type) for f in failed] == [(call, error_type)]
    assert error_type in check.last_reason("a")


@pytest.mark.parametrize(
    ("kind", "error", "error_type"),
    [
        ("error", EngineError, "EngineError"),
        ("unreachable", EngineUnreachable, "EngineUnreachable"),
        ("hang", EngineCallTimeout, "EngineCallTimeout"),
    ],
)
async def test_resume_call_failure_fails_the_engine(
    tmp_path: Path, kind: str, error: type[Exception], error_type: str
) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [0], initial=State.SLEPT, faults=FaultPlan().on("resume", kind))
        with pytest.raises(error):
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.FAILED
    check = check_log(rig)
    assert check.path("a") == ["gated", "waking", "failed"]
    assert [(f.call, f.error_type) for f in check.of(AdapterCallFailed, "a")] == [
        ("resume", error_type)
    ]


async def test_hang_with_client_timeout_is_the_engines_timeout(tmp_path: Path) -> None:
    """A call that hangs for a while and then times out in the client (not our deadline)."""
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [0], faults=FaultPlan().on("release", "hang", delay_s=1.5))
        with pytest.raises(EngineCallTimeout, match="simulated hang"):
            await rig.orch.release("a")
        assert rig.orch.state("a") is State.FAILED
    check_log(rig)


async def test_engine_killed_mid_release(tmp_path: Path) -> None:
    """The process dies during release: unreachable, its memory goes ~130 ms later. The
    neighbour's gate waits for the memory to really go, then opens."""
    async with open_rig(tmp_path) as rig:
        await _pair(rig, FaultPlan().on("release", "crash", delay_s=0.13))
        with pytest.raises(EngineUnreachable, match="process died"):
            await rig.orch.release("a")
        assert rig.orch.state("a") is State.FAILED
        t_crash = rig.clock.now()
        await rig.orch.wake("b")  # opens once the dead process's memory is gone
        assert rig.orch.state("b") is State.ACTIVE
        assert rig.clock.now() - t_crash >= 0.13  # not before the memory was gone
    check = check_log(rig)
    assert "EngineUnreachable" in check.last_reason("a")
    opened = [d for d in check.of(GateDecision, "b") if d.gate == "wake" and d.opened]
    assert opened and opened[0].observed_bytes[0] is not None
    assert opened[0].observed_bytes[0] <= rig.threshold


async def test_engine_killed_while_its_release_call_hangs(tmp_path: Path) -> None:
    """SIGKILL-like death while we wait on the call: our deadline ends the wait."""
    async with open_rig(tmp_path) as rig:
        await _pair(rig, FaultPlan().on("release", "hang"))

        async def kill_later() -> None:
            await rig.clock.sleep(1.0)
            rig.sims["a"].kill(after_s=0.13)

        rig.tg.start_soon(kill_later)
        with pytest.raises(EngineCallTimeout):
            await rig.orch.release("a")
        assert rig.orch.state("a") is State.FAILED
        await rig.orch.wake("b")  # the memory of the dead engine is gone by now
        assert rig.orch.state("b") is State.ACTIVE
    check_log(rig)


async def test_engine_killed_mid_wake(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim(
            "a", [0], initial=State.SLEPT, faults=FaultPlan().on("resume", "crash", delay_s=0.13)
        )
        await rig.add_sim("b", [0], initial=State.SLEPT)
        with pytest.raises(EngineUnreachable):
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.FAILED
        await rig.orch.wake("b")  # a failed engine is not a blocker; its memory is measured
        assert rig.orch.state("b") is State.ACTIVE
    check = check_log(rig)
    assert check.path("a") == ["gated", "waking", "failed"]


async def test_noop_resume_is_caught_by_the_resume_gate(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [0], faults=FaultPlan().on("resume", "noop_resume"))
        await rig.orch.release("a")
        with pytest.raises(GateTimeout) as info:
            await rig.orch.wake("a")
        assert info.value.gate == "resume"
        assert rig.orch.state("a") is State.FAILED
    check = check_log(rig)
    assert "wake failed: GateTimeout" in check.last_reason("a")


async def test_resume_of_an_unreleased_tag_is_refused_by_the_engine(tmp_path: Path) -> None:
    """Resume is not idempotent: a tag that was not released is refused (HTTP 400 in SGLang);
    the engine is failed with the engine's own message, never resumed twice."""
    async with open_rig(tmp_path) as rig:
        sim = await rig.add_sim("a", [0], release_limit_bytes=10 * GIB)
        await rig.orch.release("a", ["kv_cache"])  # weights and graphs stay
        with pytest.raises(EngineError, match="not released"):
            await rig.orch.wake("a", ["weights", "kv_cache"])
        assert rig.orch.state("a") is State.FAILED
        assert sim.released_tags == {"kv_cache"}  # nothing changed in the engine
    check = check_log(rig)
    assert "HTTP 400" in check.of(AdapterCallFailed, "a")[0].error


async def test_cotenant_on_a_shared_gpu_keeps_the_gate_shut_and_is_named(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [1], initial=State.SLEPT)
        assert rig.gpus is not None
        rig.gpus.cotenant(31337, 1, 12 * GIB)
        with pytest.raises(GateTimeout) as info:
            await rig.orch.wake("a")
        assert rig.orch.state("a") is State.SLEPT
        assert info.value.readings[rig.dev(1).key] == 12 * GIB + ENGINE_FP.context
    check = check_log(rig)
    report = [r for r in check.of(AttributionReport, "a") if r.context == "wake_timeout"][-1]
    assert (31337, "foreign") in {(p.pid, p.owner) for p in report.processes}
    assert check.of(GateTimedOut, "a")[0].last_bytes[0] == 12 * GIB + ENGINE_FP.context


async def test_orphan_of_a_dead_engine_is_foreign_and_blocks(tmp_path: Path) -> None:
    """A worker process left behind by an engine that was restarted: in no engine's tree."""
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [2], initial=State.SLEPT)
        assert rig.gpus is not None
        rig.gpus.set_usage(6001, 2, 20 * GIB)  # the orphan (its parent is gone)
        with pytest.raises(GateTimeout):
            await rig.orch.wake("a")
        rig.gpus.set_usage(6001, 2, 0)  # someone kills it: the next wake opens
        await rig.orch.wake("a")
        assert rig.orch.state("a") is State.ACTIVE
    check = check_log(rig)
    report = [r for r in check.of(AttributionReport, "a") if r.context == "wake_timeout"][-1]
    assert (6001, "foreign") in {(p.pid, p.owner) for p in report.processes}


async def test_memory_that_frees_slowly_opens_the_gate_only_once_under(tmp_path: Path) -> None:
    """30 GiB draining in 1 GiB steps every 0.25 s (7.5 s): the gate opens only once the
    whole GPU is at or under the threshold, and soon after that."""
    async with open_rig(tmp_path, wake_gate=GatePolicy(deadline_s=20.0)) as rig:
        await rig.add_sim("a", [3], initial=State.SLEPT)
        assert rig.gpus is not None
        steps = [(0.25 * i, (30 - i) * GIB) for i in range(1, 31)]
        rig.gpus.set_usage(7001, 3, 30 * GIB)
        rig.gpus.schedule(7001, 3, [p for t, b in steps for p in ((t, b + GIB), (t, b))])
        t0 = rig.clock.now()
        await rig.orch.wake("a")
        waited = rig.clock.now() - t0
        assert rig.orch.state("a") is State.ACTIVE
        under = next(t for t, b in steps if b + ENGINE_FP.context <= rig.threshold)
        assert under <= waited < under + 0.25, (waited, under)
    check = check_log(rig)
    decisions = [d for d in check.of(GateDecision, "a") if d.gate == "wake"]
    assert sum(not d.passed for d in decisions) >= 20  # it watched the memory drain


async def test_release_many_first_failure_leaves_every_engine_documented(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("good", [0], faults=FaultPlan().on("release", "late_release", delay_s=1))
        await rig.add_sim("bad", [1], faults=FaultPlan().on("release", "error"))
        with pytest.raises(EngineError):
            await rig.orch.release_many(["good", "bad"])
        assert rig.orch.state("bad") is State.FAILED
        assert rig.orch.state("good") is State.FAILED  # cancelled mid-release: unknown
    check = check_log(rig)
    assert "cancelled during release" in check.last_reason("good")


async def test_a_failed_engine_is_restarted_and_recovered_with_evidence(tmp_path: Path) -> None:
    """The repair after any failure: restart the engine process, measure it, recover it
    with that evidence (kept in the log); it then cycles normally."""
    async with open_rig(tmp_path) as rig:
        sim = await rig.add_sim("a", [0], faults=FaultPlan().on("release", "partial_release"))
        with pytest.raises(GateTimeout):
            await rig.orch.release("a")
        assert rig.orch.state("a") is State.FAILED
        with pytest.raises(IllegalTransition):
            await rig.orch.wake("a")  # a failed engine is not woken without recovery
        sim.faults = FaultPlan()
        sim.restart(asleep=True)
        assert sim.resident_bytes() == ENGINE_FP.context
        measured = f"restarted; resident {sim.resident_bytes() / GIB:.2f} GiB"
        await rig.orch.recover("a", Evidence(State.SLEPT, measured))
        await rig.orch.wake("a")
        await rig.orch.release("a")
        assert rig.orch.state("a") is State.SLEPT
    check = check_log(rig)
    cycle = ["gated", "waking", "active", "releasing", "slept"]
    assert check.path("a") == ["releasing", "failed", "slept", *cycle]
    assert check.transitions("a")[2].evidence == measured


async def test_engine_history_is_bounded(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        await rig.add_sim("a", [0])
        for _ in range(HISTORY_LEN):
            await rig.orch.release("a")
            await rig.orch.wake("a")
        assert len(rig.orch.engine("a").history) == HISTORY_LEN  # not 5 x HISTORY_LEN
    assert len(check_log(rig).transitions("a")) == 5 * HISTORY_LEN  # the log has them all
