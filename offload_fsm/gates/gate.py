"""Probe gates: a condition over probe rounds + settle + deadline + events, written once.

Three conditions use it (see :mod:`offload_fsm.gates.conditions`):

- ``wake``    (gated -> waking): whole-GPU used memory <= threshold on every GPU the engine
  needs, and no conflicting engine awake there;
- ``release`` (releasing -> slept): the engine's own process-tree residual <= its limit;
- ``resume``  (waking -> active): the engine's resident memory came back.

Fail closed: a round that cannot be measured never counts as passing. With ``fail_open`` the
gate opens instead and emits a distinct, loud ``GateFailOpen`` event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from offload_fsm.core.errors import (
    BackendUnavailable,
    DeviceIdError,
    DeviceUnhealthy,
    GateTimeout,
    GateUnmeasurable,
    ProbeError,
)
from offload_fsm.core.redact import redact
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import GateDecision, GateFailOpen, GateTimedOut, MemorySample
from offload_fsm.probe.base import MIB, GpuDevice, ProbeBackend, ProbeRound
from offload_fsm.settings import GatePolicy
from offload_fsm.timing.clock import Clock, VirtualClock, WakeToken
from offload_fsm.timing.deadlines import RoundDeadlines


@dataclass(frozen=True, slots=True)
class Verdict:
    """One round judged. ``passed`` None: the round could not be measured (never a pass)."""

    passed: bool | None
    observed: tuple[int | None, ...]  # aligned with the gate's devices
    limit: int | None
    detail: str = ""
    # Other engines' states keep the gate shut whatever memory says: the memory rule may
    # settle meanwhile, the gate opens only once nothing blocks; while blocked it sleeps until
    # nudged (their transitions nudge it) or a heartbeat, instead of polling.
    blocked: bool = False


class Condition(Protocol):
    gate: str  # "wake" | "release" | "resume"

    def evaluate(self, round: ProbeRound) -> Verdict: ...


@dataclass(slots=True)
class GateResult:
    opened: bool
    fail_open: bool
    attempts: int
    elapsed_s: float
    last_round: ProbeRound | None
    verdict: Verdict | None
    unmeasured: bool = False


class Nudge:
    """Wakes waiting gates early: "memory on these GPUs may have just moved".

    The orchestrator nudges when a release call returns or an engine leaves memory behind;
    a nudged gate polls at once and restarts its backoff from the fastest interval, so it
    can back off to a cheap cap while nothing happens yet react within milliseconds.
    """

    def __init__(self) -> None:
        self._event: anyio.Event | None = None  # made by a real-time sleeper only
        self._tokens: set[WakeToken] = set()
        self.count = 0

    def nudge(self) -> None:
        self.count += 1
        if self._event is not None:
            self._event.set()
            self._event = None
        for token in self._tokens:
            token.wake()

    async def sleep(self, clock: Clock, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when nudged before that."""
        if isinstance(clock, VirtualClock):  # a real sleeper, so virtual time moves on
            token = WakeToken()
            self._tokens.add(token)
            try:
                return await clock.sleep_or_wake(seconds, token)
            finally:
                self._tokens.discard(token)
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        with anyio.move_on_after(seconds):
            await event.wait()
            return True
        return False


class NudgeHub:
    """Nudges per GPU: a gate watches the GPUs it gates; moves on them nudge it alone."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[Nudge]] = {}

    def watch(self, keys: Iterable[str]) -> _Watch:
        """``with hub.watch(keys) as nudge:`` the gate on those GPUs' nudge, while inside."""
        return _Watch(self._by_key, tuple(keys))

    def nudge(self, keys: Iterable[str]) -> None:
        woken: set[Nudge] = set()
        for key in keys:
            for nudge in self._by_key.get(key, ()):
                if nudge not in woken:
                    woken.add(nudge)
                    nudge.nudge()


class _Watch:
    """One gate's watch on some GPUs' nudges, for as long as the gate waits."""

    __slots__ = ("_by_key", "_keys", "_nudge")

    def __init__(self, by_key: dict[str, set[Nudge]], keys: tuple[str, ...]) -> None:
        self._by_key = by_key
        self._keys = keys
        self._nudge = Nudge()

    def __enter__(self) -> Nudge:
        for key in self._keys:
            self._by_key.setdefault(key, set()).add(self._nudge)
        return self._nudge

    def __exit__(self, *exc_info: object) -> None:
        for key in self._keys:
            watchers = self._by_key.get(key)
            if watchers is not None:
                watchers.discard(self._nudge)
                if not watchers:
                    del self._by_key[key]


@dataclass(slots=True)
class GateContext:
    """Who the gate is for (copied into every event)."""

    engine_id: str | None = None
    pipeline_id: str | None = None
    on_progress: Callable[[Verdict, int, float], None] | None = None  # CLI progress lines
    report: Callable[[ProbeRound | None], Awaitable[object]] | None = None
    nudge: Nudge | None = None
    _last_sampled: dict[str, int | None] = field(default_factory=dict)


_EPSILON_S = 1e-6
_MOVED_BYTES = 1 * MIB  # memory that moved more than this resets polling to its fastest


async def run_gate(
    condition: Condition,
    *,
    devices: Sequence[GpuDevice],
    probe: ProbeBackend,
    policy: GatePolicy,
    clock: Clock,
    recorder: Recorder | None = None,
    ctx: GateContext | None = None,
    deadlines: RoundDeadlines | None = None,
) -> GateResult:
    """Poll until ``condition`` holds for ``policy.settle_samples`` rounds in a row.

    ``deadlines``: the caller's (entered in this task) to arm each round's deadline on;
    None: the gate enters its own.

    Raises :class:`GateTimeout` at the deadline (after emitting ``GateTimedOut`` and, where
    ``ctx.report`` is given, an attribution report), :class:`GateUnmeasurable` when the probe
    is unavailable or kept failing (fail closed), :class:`DeviceUnhealthy` at once.
    """
    ctx = ctx or GateContext()
    keys = tuple(d.key for d in devices)
    events = _GateEvents(recorder, ctx, keys, condition.gate)
    start = clock.now()
    interval = policy.poll_min_s
    settle = attempts = 0
    last_round: ProbeRound | None = None
    verdict: Verdict | None = None
    prev_observed: tuple[int | None, ...] | None = None
    last_event_at = -float("inf")
    last_error: ProbeError | None = None
    prev_passed: bool | None = None

    async def emit_decision(v: Verdict, opened: bool, elapsed: float) -> None:
        await events.emit(
            GateDecision,
            passed=bool(v.passed),
            opened=opened,
            observed_bytes=v.observed,
            limit_bytes=v.limit,
            settle_count=settle,
            settle_required=policy.settle_samples,
            attempt=attempts,
            elapsed_s=elapsed,
            detail=v.detail,
        )

    # A deadline for each probe round (a hung probe must not hold the gate past its own
    # deadline); the caller's series where it has one.
    with RoundDeadlines(clock) if deadlines is None else nullcontext(deadlines) as rounds:
        while True:
            attempts += 1
            try:
                last_round = await rounds.run(policy.probe_timeout_s, probe.probe, devices)
            except DeviceUnhealthy:
                raise
            except (ProbeError, TimeoutError) as exc:
                err = exc if isinstance(exc, ProbeError) else ProbeError(f"probe round hung: {exc}")
                last_error = err
                verdict = Verdict(None, tuple(None for _ in keys), None, f"unmeasured: {err}")
                if policy.fail_open:
                    return await _fail_open(events, err, clock.now() - start, attempts)
                if isinstance(exc, (BackendUnavailable, DeviceIdError)):  # retrying cannot help
                    raise GateUnmeasurable(
                        f"{condition.gate} gate on {', '.join(keys)}: {exc} (failing closed)"
                    ) from exc
            else:
                verdict = condition.evaluate(last_round)
                await _sample_memory(last_round, recorder, ctx)
                if verdict.passed is None and policy.fail_open:
                    err = ProbeError(verdict.detail or "memory could not be measured")
                    return await _fail_open(events, err, clock.now() - start, attempts)
            settle = settle + 1 if verdict.passed else 0
            settled = settle >= policy.settle_samples
            opened = settled and not verdict.blocked
            now = clock.now()
            elapsed = now - start
            changed = prev_observed is None or _moved(prev_observed, verdict.observed)
            flipped = verdict.passed != prev_passed
            prev_passed = verdict.passed
            # Decisions are events when memory moved, when the verdict flipped, on opening, and
            # as a heartbeat: not on every millisecond poll of memory that does not move.
            if changed or flipped or opened or now - last_event_at >= policy.heartbeat_s:
                await emit_decision(verdict, opened, elapsed)
                last_event_at = now
            if ctx.on_progress is not None:
                ctx.on_progress(verdict, settle, elapsed)
            if opened:
                return GateResult(True, False, attempts, elapsed, last_round, verdict)
            if elapsed >= policy.deadline_s - _EPSILON_S:  # float sums never quite reach it
                break
            if verdict.passed and not settled:
                interval = policy.poll_min_s
                pause = policy.settle_interval_s
            elif verdict.blocked and ctx.nudge is not None:
                # Waiting on other engines, not on memory: their transitions nudge us.
                interval = policy.poll_min_s  # once unblocked, memory may be moving
                pause = policy.heartbeat_s
            else:
                interval = (
                    policy.poll_min_s
                    if changed
                    else min(interval * policy.backoff, policy.poll_max_s)
                )
                pause = interval
            prev_observed = verdict.observed
            pause = min(pause, max(0.0, policy.deadline_s - elapsed))
            if ctx.nudge is None or (verdict.passed and not settled):
                await clock.sleep(pause)
            elif await ctx.nudge.sleep(clock, pause):
                interval = policy.poll_min_s

    assert verdict is not None
    unmeasured = verdict.passed is None
    with anyio.CancelScope(shield=True):
        await events.emit(
            GateTimedOut,
            last_bytes=verdict.observed,
            limit_bytes=verdict.limit,
            elapsed_s=clock.now() - start,
            unmeasured=unmeasured,
        )
    report = None
    if ctx.report is not None:
        with anyio.CancelScope(shield=True):
            report = await ctx.report(last_round if not unmeasured else None)
    if unmeasured:
        raise GateUnmeasurable(
            f"{condition.gate} gate on {', '.join(keys)}: memory could not be measured for "
            f"{policy.deadline_s:g} s ({last_error or verdict.detail}); failing closed"
        )
    raise GateTimeout(
        f"{condition.gate} gate on {', '.join(keys)} did not open within "
        f"{policy.deadline_s:g} s: {verdict.detail}",
        gate=condition.gate,
        engine_id=ctx.engine_id,
        readings=dict(zip(keys, verdict.observed)),
        threshold_bytes=verdict.limit,
        report=report,
    )


def _moved(before: tuple[int | None, ...], after: tuple[int | None, ...]) -> bool:
    return any(_moved_one(a, b) for a, b in zip(before, after))


def _moved_one(before: int | None, after: int | None) -> bool:
    """One GPU's reading moved: it became (un)known, or changed by more than 1 MiB."""
    if before is None or after is None:
        return before is not after
    return abs(before - after) > _MOVED_BYTES


async def _sample_memory(round: ProbeRound, recorder: Recorder | None, ctx: GateContext) -> None:
    """Memory samples as events, only when a GPU's used memory moved (keeps logs small)."""
    if recorder is None:
        return
    last = ctx._last_sampled
    for mem in round.memory:
        key = mem.device.key
        used = mem.used_bytes
        if key in last and not _moved_one(last[key], used):
            continue
        last[key] = used
        await recorder.emit(
            MemorySample,
            gpus=(key,),
            engine_id=ctx.engine_id,
            pipeline_id=ctx.pipeline_id,
            backend=round.backend,
            used_bytes=mem.used_bytes,
            free_bytes=mem.free_bytes,
            total_bytes=mem.total_bytes,
            reserved_bytes=mem.reserved_bytes,
        )


@dataclass(frozen=True, slots=True)
class _GateEvents:
    """Emits one gate run's events, each stamped with whose gate it is and on which GPUs."""

    recorder: Recorder | None
    ctx: GateContext
    keys: tuple[str, ...]
    gate: str

    async def emit(
        self, kind: type[GateDecision | GateTimedOut | GateFailOpen], **fields: Any
    ) -> None:
        if self.recorder is not None:
            ctx = self.ctx
            await self.recorder.emit(
                kind,
                engine_id=ctx.engine_id,
                pipeline_id=ctx.pipeline_id,
                gpus=self.keys,
                gate=self.gate,
                **fields,
            )


async def _fail_open(
    events: _GateEvents, error: ProbeError, elapsed: float, attempts: int
) -> GateResult:
    error_text = redact(f"{type(error).__name__}: {error}")
    await events.emit(GateFailOpen, error=error_text, elapsed_s=elapsed)
    return GateResult(True, True, attempts, elapsed, None, None, unmeasured=True)
