"""The wake gate of a group: one gate over the union of its GPUs, opened for all at once.

All-or-nothing admission: two pipelines expanding onto the same shared GPUs can never each
take half and wait for the other's half. When the group gate opens, each member gets its own
opened decision (its GPUs' readings from the same settled rounds), so replay can justify
every wake.

Decide, then tell: :func:`wake_group_gate` returns right after its final blocker check with
no await in between, the caller fires every member's ``gate_open`` at once, and only then
are the member decisions emitted (:func:`emit_member_decisions`). An emit may wait (a full
subscriber); a competing wake that runs in that wait finds the members already awake.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from offload_fsm.engines.spec import Engine
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import GateDecision
from offload_fsm.gates.conditions import WakeCondition
from offload_fsm.gates.gate import GateResult
from offload_fsm.probe.base import GpuDevice
from offload_fsm.settings import GatePolicy
from offload_fsm.timing.clock import Clock

# Runs one gate for a group over the given GPUs (the orchestrator's, with its nudges).
GateOver = Callable[
    [list[Engine], tuple[GpuDevice, ...], WakeCondition, GatePolicy], Awaitable[GateResult]
]


async def wake_group_gate(
    group: list[Engine],
    *,
    gate_over: GateOver,
    blockers: Callable[[], list[str]],
    policy: GatePolicy,
    threshold_bytes: int,
    clock: Clock,
) -> GateResult:
    """Gate ``group``'s wake on ``policy``; returns with no blocker left (or failed open).
    The caller fires the members' ``gate_open`` before its next await."""
    wake_policy = policy
    started = clock.now()
    devices = tuple({d.key: d for e in group for d in e.spec.devices}.values())
    need = [e.spec.need_free_bytes for e in group if e.spec.need_free_bytes is not None]
    while True:
        result = await gate_over(
            group,
            devices,
            WakeCondition(devices, threshold_bytes, max(need, default=None), blockers=blockers),
            policy,
        )
        # The final check: the caller fires gate_open with no await in between, so two
        # engines gated on one GPU cannot both open on the same low reading.
        if result.fail_open or not blockers():
            return result
        left = wake_policy.deadline_s - (clock.now() - started)
        policy = dataclasses.replace(policy, deadline_s=max(left, policy.poll_min_s))


async def emit_member_decisions(
    group: Sequence[Engine],
    result: GateResult,
    policy: GatePolicy,
    threshold_bytes: int,
    recorder: Recorder,
) -> None:
    """A group gate opened (and its members' ``gate_open`` fired): each member of a group of
    several gets its own opened decision event."""
    if len(group) < 2 or result.verdict is None or result.last_round is None:
        return
    for eng in group:
        verdict = WakeCondition(eng.spec.devices, threshold_bytes).evaluate(result.last_round)
        await recorder.emit(
            GateDecision,
            engine_id=eng.id,
            pipeline_id=eng.spec.pipeline_id,
            gpus=eng.gpus,
            gate="wake",
            passed=bool(verdict.passed),
            opened=True,
            observed_bytes=verdict.observed,
            limit_bytes=verdict.limit,
            settle_count=policy.settle_samples,
            settle_required=policy.settle_samples,
            attempt=result.attempts,
            elapsed_s=result.elapsed_s,
            detail=f"group gate of {', '.join(e.id for e in group)}: {verdict.detail}",
        )


__all__ = ["GateOver", "emit_member_decisions", "wake_group_gate"]
