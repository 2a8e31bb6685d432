"""Async engine lifecycle orchestration: release and wake, every transition probe-gated.

I/O happens *between* transitions, never inside them: await the adapter or the probe, then
fire the pure core synchronously, then publish the event. Each operation starts with a
synchronous trigger that is legal only from a resting state (``active`` or ``slept``), so the
core itself admits one operation per engine at a time and refuses a second wake of a waking
or active engine before any engine call (the "double resume" crash).

Cancellation at any await leaves a documented state (docs/architecture.md):
cancelled while gated -> ``slept`` (cancel_wake); while releasing or waking -> ``failed``
(the engine's memory state is unknown, and resume is not idempotent). An operation whose
caller was already cancelled when it began changes nothing (``release_many`` cancelled
before it reached an engine leaves that engine ``active``, not ``failed``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel

from offload_fsm.adapters.base import EngineAdapter
from offload_fsm.bus import Recorder
from offload_fsm.clock import Clock, RealClock, deadline
from offload_fsm.concurrency import all_or_first_error
from offload_fsm.conditions import ReleaseCondition, ResumeCondition, WakeCondition
from offload_fsm.config import (
    CUDA_CONTEXT_FLOOR_GIB,
    DEFAULT_RELEASE_MARGIN_GIB,
    GatePolicy,
    check_threshold_fits,
    gib_to_bytes,
)
from offload_fsm.errors import (
    ConfigError,
    EngineCallTimeout,
    EngineError,
    GateError,
    IllegalTransition,
    OffloadFsmError,
    ProbeError,
)
from offload_fsm.events import (
    AdapterCallFailed,
    AdapterCallFinished,
    AdapterCallStarted,
    AttributionReport,
    EngineRegistered,
    GateDecision,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.gate import GateContext, GateResult, NudgeHub, run_gate
from offload_fsm.lifecycle import AWAKE_STATES, Evidence, Lifecycle, State, Trigger
from offload_fsm.probe.attribution import (
    Attribution,
    ProcessTable,
    attribute,
    detect_pid_namespace,
    read_process,
    resident_by_gpu,
)
from offload_fsm.probe.base import GpuDevice, ProbeBackend, ProbeRound

PidsFn = Callable[[], frozenset[int]]
HISTORY_LEN = 64  # states kept per engine in Engine.history (the event log has them all)

# States in which an engine holds, or may be about to hold, memory on its GPUs: a wake of a
# conflicting engine on a shared GPU waits while any of these is current.
_OCCUPYING = AWAKE_STATES | {State.RELEASING}


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine (or trainer) the orchestrator owns."""

    engine_id: str
    adapter: EngineAdapter
    devices: tuple[GpuDevice, ...]
    pipeline_id: str | None = None
    role: str = "engine"  # "engine" | "trainer"
    # Engines with the same non-empty group may be awake together on a shared GPU; any other
    # two engines whose GPUs overlap are never both waking/active/releasing.
    share_group: str | None = None
    initial: State = State.ACTIVE
    release_limit_bytes: int | None = None  # None: the orchestrator's default
    resume_fraction: float = 0.8
    need_free_bytes: int | None = None  # optional second wake rule
    pids: PidsFn | None = None  # the engine's process tree; default: walk /proc from the root

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ConfigError("engine_id", self.engine_id, "a non-empty string")
        if not self.devices:
            raise ConfigError(f"{self.engine_id}.devices", self.devices, "at least one GPU")
        keys = [d.key for d in self.devices]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{self.engine_id}.devices", keys, "distinct GPUs")
        if not 0 < self.resume_fraction <= 1:
            raise ConfigError(
                f"{self.engine_id}.resume_fraction", self.resume_fraction, "a fraction in (0, 1]"
            )
        if self.initial not in (State.ACTIVE, State.SLEPT):
            raise ConfigError(f"{self.engine_id}.initial", self.initial.value, "active or slept")


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    threshold_bytes: int
    wake_gate: GatePolicy = field(default_factory=GatePolicy)
    release_gate: GatePolicy = field(default_factory=lambda: GatePolicy(deadline_s=30.0))
    resume_gate: GatePolicy = field(
        default_factory=lambda: GatePolicy(deadline_s=30.0, settle_samples=1)
    )
    call_timeout_s: float = 120.0  # every adapter call
    drain_timeout_s: float = 30.0
    default_release_limit_bytes: int = gib_to_bytes(
        CUDA_CONTEXT_FLOOR_GIB + DEFAULT_RELEASE_MARGIN_GIB
    )
    release_unmeasured: str = "pass"  # "pass" | "fail" when no engine PID is visible
    resume_unmeasured: str = "pass"
    proc_root: str = "/proc"
    # "host" | "foreign" | "unknown"; None: detected from ``proc_root`` at start. In a
    # foreign PID namespace per-process figures are unknown (whole-GPU ones stay valid).
    pid_namespace: str | None = None

    def __post_init__(self) -> None:
        if self.threshold_bytes <= 0:
            raise ConfigError("threshold_bytes", self.threshold_bytes, "a positive byte count")
        for name in ("release_unmeasured", "resume_unmeasured"):
            if getattr(self, name) not in ("pass", "fail"):
                raise ConfigError(name, getattr(self, name), "'pass' or 'fail'")


@dataclass(slots=True)
class Engine:
    spec: EngineSpec
    lifecycle: Lifecycle
    resident_before: int | None = None  # max per-GPU resident bytes before the last release
    operations: int = 0
    # The latest states, bounded: an orchestrator that runs for weeks must not grow.
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    root_start: int | None = None  # start ticks of the root process when registered

    @property
    def id(self) -> str:
        return self.spec.engine_id

    @property
    def state(self) -> State:
        return self.lifecycle.state


class Orchestrator:
    """Owns engines; releases and wakes them with every transition gated on measurements."""

    def __init__(
        self,
        *,
        probe: ProbeBackend,
        recorder: Recorder,
        config: OrchestratorConfig,
        clock: Clock | None = None,
    ) -> None:
        self.probe = probe
        self.recorder = recorder
        self.config = config
        self.clock: Clock = clock or recorder.clock or RealClock()
        self.engines: dict[str, Engine] = {}
        self._by_gpu: dict[str, list[Engine]] = {}  # device key -> engines using it
        self.nudges = NudgeHub()  # wakes the gates on a GPU whenever its memory may have moved
        self.pid_namespace = config.pid_namespace or detect_pid_namespace(config.proc_root)

    # --- run and registration ---------------------------------------------------------------

    async def start_run(self, *, command: str = "", backend: str | None = None) -> None:
        await self.recorder.emit(
            RunStarted,
            tool_version=_version(),
            threshold_bytes=self.config.threshold_bytes,
            settle_samples=self.config.wake_gate.settle_samples,
            fail_open=self.config.wake_gate.fail_open,
            backend=backend or self.probe.name,
            command=command,
        )

    async def finish_run(self, status: str, reason: str | None = None) -> None:
        with anyio.CancelScope(shield=True):
            await self.recorder.emit(RunFinished, status=status, reason=reason)

    async def register(self, spec: EngineSpec) -> Engine:
        if spec.engine_id in self.engines:
            raise ConfigError("engine_id", spec.engine_id, "an id not registered yet")
        threshold = self.config.threshold_bytes
        check_threshold_fits("threshold_bytes", threshold, threshold, spec.devices)
        engine = Engine(spec, Lifecycle(spec.engine_id, initial=spec.initial))
        root = spec.adapter.process_root
        if spec.pids is None and root is not None:  # which process the root pid is, for good
            info = read_process(self.config.proc_root, root)
            engine.root_start = info.start_ticks if info is not None else None
        self.engines[spec.engine_id] = engine
        for dev in spec.devices:
            self._by_gpu.setdefault(dev.key, []).append(engine)
        await self.recorder.emit(
            EngineRegistered,
            engine_id=spec.engine_id,
            pipeline_id=spec.pipeline_id,
            gpus=tuple(d.key for d in spec.devices),
            role=spec.role,
            adapter=spec.adapter.name,
            initial_state=spec.initial.value,
            process_root=spec.adapter.process_root,
            share_group=spec.share_group,
        )
        return engine

    def engine(self, engine_id: str) -> Engine:
        try:
            return self.engines[engine_id]
        except KeyError:
            raise ConfigError("engine_id", engine_id, f"one of {sorted(self.engines)}") from None

    def state(self, engine_id: str) -> State:
        return self.engine(engine_id).state

    # --- release ----------------------------------------------------------------------------

    async def release(self, engine_id: str, tags: Sequence[str] | None = None) -> None:
        """active -> releasing -> slept; the release gate checks the engine's own residual."""
        eng = self.engine(engine_id)
        await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled already: touch nothing
        await self._fire(eng, Trigger.RELEASE)  # illegal -> raises before any engine call
        try:
            await self._call(
                eng,
                "prepare_release",
                eng.spec.adapter.prepare_release,
                self.config.drain_timeout_s,
            )
            eng.resident_before = await self._resident_now(eng)
            await self._call(
                eng, "release", eng.spec.adapter.release, _tags(tags), detail=_tag_text(tags)
            )
            self.nudges.nudge(_keys(eng))  # memory on these GPUs may just have moved
            limit = eng.spec.release_limit_bytes or self.config.default_release_limit_bytes
            pids = self._pids_of(eng)
            result = await self._gate(
                eng,
                ReleaseCondition(
                    eng.spec.devices,
                    lambda: pids,
                    limit,
                    self.config.release_unmeasured,
                    self.pid_namespace,
                ),
                self.config.release_gate,
            )
            await self._report(eng, result.last_round, "after_release")
            await self._fire(eng, Trigger.RELEASED)
        except BaseException as exc:
            await self._fail_after(eng, exc, "release")
            raise

    # --- wake -------------------------------------------------------------------------------

    async def wake(self, engine_id: str, tags: Sequence[str] | None = None) -> None:
        """slept -> gated -> [whole-GPU residual gate] -> waking -> [resume check] -> active."""
        await self.wake_many([engine_id], tags)

    async def wake_many(self, engine_ids: Iterable[str], tags: Sequence[str] | None = None) -> None:
        """Wake a group together: one gate over all of their GPUs, opened for all at once.

        All-or-nothing admission: two pipelines expanding onto the same shared GPUs can never
        each take half and wait for the other's half. A second wake of any member (already
        gated, waking or active) is refused before any state changes or engine call. After
        the gate, the members resume concurrently; the first failure cancels the rest.
        """
        group = [self.engine(i) for i in dict.fromkeys(engine_ids)]
        for i, eng in enumerate(group):  # members that would share a GPU awake: refused
            clash = [o.id for o in group[i + 1 :] if o in self._conflicts(eng)]
            if clash:
                raise ConfigError(
                    "wake_many engine_ids",
                    [e.id for e in group],
                    f"engines that may be awake together ({eng.id} shares a GPU with "
                    f"{', '.join(clash)} outside a common share_group)",
                )
        for eng in group:  # all legal, or nothing changes
            if not eng.lifecycle.can(Trigger.REQUEST_WAKE):
                raise IllegalTransition(eng.id, eng.state.value, Trigger.REQUEST_WAKE.value)
        await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled already: touch nothing
        for eng in group:
            await self._emit_transition(eng, eng.lifecycle.fire(Trigger.REQUEST_WAKE))
        try:
            result = await self._wake_gate(group)
        except BaseException as exc:
            for eng in group:
                await self._leave_gated(eng, exc)
            raise
        # No await between the final blocker check (in _wake_gate) and these triggers.
        reason = "FAIL-OPEN: gate opened unmeasured" if result.fail_open else None
        steps = [eng.lifecycle.fire(Trigger.GATE_OPEN, reason=reason) for eng in group]
        for eng, step in zip(group, steps, strict=True):
            await self._emit_transition(eng, step)
        await all_or_first_error([partial(self._resume, eng, tags) for eng in group])

    async def _resume(self, eng: Engine, tags: Sequence[str] | None) -> None:
        try:
            await self._call(
                eng, "resume", eng.spec.adapter.resume, _tags(tags), detail=_tag_text(tags)
            )
            if eng.resident_before:
                pids = self._pids_of(eng)
                await self._gate(
                    eng,
                    ResumeCondition(
                        eng.spec.devices,
                        lambda: pids,
                        eng.resident_before,
                        eng.spec.resume_fraction,
                        self.config.resume_unmeasured,
                        self.pid_namespace,
                    ),
                    self.config.resume_gate,
                )
            await self._call(eng, "finish_wake", eng.spec.adapter.finish_wake)
            await self._fire(eng, Trigger.WOKEN)
        except BaseException as exc:
            await self._fail_after(eng, exc, "wake")
            raise

    async def _wake_gate(self, group: list[Engine]) -> GateResult:
        policy = self.config.wake_gate
        started = self.clock.now()
        devices = tuple({d.key: d for e in group for d in e.spec.devices}.values())
        need = [e.spec.need_free_bytes for e in group if e.spec.need_free_bytes is not None]

        def blockers() -> list[str]:
            return [b for e in group for b in self.blockers(e.id)]

        while True:
            result = await self._gate_over(
                group,
                devices,
                WakeCondition(
                    devices, self.config.threshold_bytes, max(need, default=None), blockers=blockers
                ),
                policy,
            )
            # The final check: the caller fires gate_open with no await in between, so two
            # engines gated on one GPU cannot both open on the same low reading.
            if result.fail_open or not blockers():
                break
            left = self.config.wake_gate.deadline_s - (self.clock.now() - started)
            policy = dataclasses.replace(policy, deadline_s=max(left, policy.poll_min_s))
        if len(group) > 1 and result.verdict is not None and result.last_round is not None:
            await self._member_decisions(group, result)
        return result

    async def _member_decisions(self, group: list[Engine], result: GateResult) -> None:
        """A group gate opened: each member gets its own opened decision (its GPUs' readings
        from the same settled rounds), so every engine's wake is justified in the log."""
        assert result.last_round is not None
        for eng in group:
            verdict = WakeCondition(eng.spec.devices, self.config.threshold_bytes).evaluate(
                result.last_round
            )
            await self.recorder.emit(
                GateDecision,
                engine_id=eng.id,
                pipeline_id=eng.spec.pipeline_id,
                gpus=_keys(eng),
                gate="wake",
                passed=bool(verdict.passed),
                opened=True,
                observed_bytes=verdict.observed,
                limit_bytes=verdict.limit,
                settle_count=self.config.wake_gate.settle_samples,
                settle_required=self.config.wake_gate.settle_samples,
                attempt=result.attempts,
                elapsed_s=result.elapsed_s,
                detail=f"group gate of {', '.join(e.id for e in group)}: {verdict.detail}",
            )

    def blockers(self, engine_id: str) -> list[str]:
        """Engines that must not be awake on ``engine_id``'s GPUs while it wakes."""
        me = self.engine(engine_id)
        return [f"{o.id} ({o.state.value})" for o in self._conflicts(me) if o.state in _OCCUPYING]

    def _conflicts(self, me: Engine) -> list[Engine]:
        """Engines that must never be awake together with ``me``: they share a GPU and no
        share group."""
        group = me.spec.share_group
        return [o for o in self._neighbours(me) if not (group and o.spec.share_group == group)]

    def _neighbours(self, me: Engine) -> list[Engine]:
        """Other engines sharing a GPU with ``me``, each once, in registration order."""
        seen: dict[str, Engine] = {}
        for dev in me.spec.devices:
            for other in self._by_gpu.get(dev.key, ()):
                if other is not me:
                    seen.setdefault(other.id, other)
        return list(seen.values())

    # --- group operations -------------------------------------------------------------------

    async def release_many(
        self, engine_ids: Iterable[str], tags: Sequence[str] | None = None
    ) -> None:
        """Release concurrently; the first failure cancels the rest and is re-raised."""
        await all_or_first_error([partial(self.release, i, tags) for i in engine_ids])

    async def recover(self, engine_id: str, evidence: Evidence) -> None:
        """failed -> slept | active, only with explicit evidence (kept in the event log)."""
        eng = self.engine(engine_id)
        step = eng.lifecycle.fire(Trigger.RECOVER, evidence=evidence)
        await self._emit_transition(eng, step, evidence=evidence.observed)

    # --- internals --------------------------------------------------------------------------

    async def _fire(self, eng: Engine, trigger: Trigger, reason: str | None = None) -> None:
        await self._emit_transition(eng, eng.lifecycle.fire(trigger, reason=reason))

    async def _emit_transition(self, eng: Engine, step: Any, evidence: str | None = None) -> None:
        eng.history.append(step.dst.value)
        if step.dst in (State.SLEPT, State.FAILED):
            self.nudges.nudge(_keys(eng))  # memory or a blocker on these GPUs may have gone
        fields = {
            "engine_id": eng.id,
            "pipeline_id": eng.spec.pipeline_id,
            "gpus": _keys(eng),
            "src": step.src.value,
            "dst": step.dst.value,
            "trigger": step.trigger.value,
            "reason": step.reason,
            "evidence": evidence,
        }
        if self.recorder.emit_now(Transition, **fields) is None:
            with anyio.CancelScope(shield=True):  # the log must record every transition made
                await self.recorder.emit(Transition, **fields)

    async def _leave_gated(self, eng: Engine, exc: BaseException) -> None:
        if eng.state is not State.GATED:
            return
        if isinstance(exc, GateError):
            trigger, reason = Trigger.GATE_TIMEOUT, str(exc)
        elif isinstance(exc, Exception):
            trigger, reason = Trigger.CANCEL_WAKE, f"wake gate aborted: {type(exc).__name__}: {exc}"
        else:
            trigger, reason = Trigger.CANCEL_WAKE, "wake cancelled while gated"
        await self._emit_transition(eng, eng.lifecycle.fire(trigger, reason=reason))

    async def _fail_after(self, eng: Engine, exc: BaseException, during: str) -> None:
        if eng.state is State.FAILED or eng.state not in (State.RELEASING, State.WAKING):
            return
        if isinstance(exc, Exception):
            reason = f"{during} failed: {type(exc).__name__}: {exc}"
        else:
            reason = f"cancelled during {during}: the engine's memory state is unknown"
        await self._emit_transition(eng, eng.lifecycle.fire(Trigger.FAIL, reason=reason))

    async def _call(
        self,
        eng: Engine,
        name: str,
        fn: Callable[..., Awaitable[None]],
        *args: Any,
        detail: str = "",
    ) -> None:
        ids = {
            "engine_id": eng.id,
            "pipeline_id": eng.spec.pipeline_id,
            "gpus": tuple(d.key for d in eng.spec.devices),
        }
        await self.recorder.emit(AdapterCallStarted, call=name, detail=detail, **ids)
        t0 = self.clock.now()
        error: EngineError | None = None
        try:
            async with deadline(self.clock, self.config.call_timeout_s):
                await fn(*args)
        except TimeoutError as exc:
            error = EngineCallTimeout(
                eng.id, name, f"no answer within {self.config.call_timeout_s:g} s"
            )
            error.__cause__ = exc
        except EngineError as exc:
            error = exc
        except OffloadFsmError:
            raise
        except Exception as exc:  # an adapter bug or an unmapped error: still the engine's
            error = EngineError(eng.id, name, f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
        elapsed = self.clock.now() - t0
        if error is not None:
            with anyio.CancelScope(shield=True):
                await self.recorder.emit(
                    AdapterCallFailed,
                    call=name,
                    elapsed_s=elapsed,
                    error_type=type(error).__name__,
                    error=str(error),
                    **ids,
                )
            raise error
        await self.recorder.emit(
            AdapterCallFinished, call=name, elapsed_s=elapsed, detail=detail, **ids
        )

    async def _gate(self, eng: Engine, condition: Any, policy: GatePolicy) -> GateResult:
        return await self._gate_over([eng], eng.spec.devices, condition, policy)

    async def _gate_over(
        self,
        group: list[Engine],
        devices: tuple[GpuDevice, ...],
        condition: Any,
        policy: GatePolicy,
    ) -> GateResult:
        """Run one gate for ``group`` (its events name the engine when there is one)."""
        first = group[0]
        with self.nudges.watch(d.key for d in devices) as nudge:
            ctx = GateContext(
                nudge=nudge,
                engine_id=first.id if len(group) == 1 else None,
                pipeline_id=first.spec.pipeline_id,
                report=lambda rnd: self._report(first, rnd, f"{condition.gate}_timeout"),
            )
            return await run_gate(
                condition,
                devices=devices,
                probe=self.probe,
                policy=policy,
                clock=self.clock,
                recorder=self.recorder,
                ctx=ctx,
            )

    def _pids_of(self, eng: Engine, table: ProcessTable | None = None) -> frozenset[int]:
        if eng.spec.pids is not None:
            return eng.spec.pids()
        root = eng.spec.adapter.process_root
        if root is None:
            return frozenset()
        table = table or self._table()
        info = table.get(root)
        known = info is not None and None not in (eng.root_start, info.start_ticks)
        if known and info is not None and info.start_ticks != eng.root_start:
            return frozenset()  # the engine's root died and its pid was recycled
        return table.tree(root)

    def _table(self) -> ProcessTable:
        return ProcessTable.snapshot(self.config.proc_root)

    async def _resident_now(self, eng: Engine) -> int | None:
        """The engine's resident bytes now (max per GPU): a diagnostic, never fatal."""
        try:
            async with deadline(self.clock, self.config.release_gate.probe_timeout_s):
                rnd = await self.probe.probe(eng.spec.devices)
        except (ProbeError, TimeoutError):
            return None
        by_gpu = resident_by_gpu(rnd, self._pids_of(eng), pid_namespace=self.pid_namespace)
        values = [v for v in by_gpu.values() if v is not None]
        return max(values) if values else None

    async def _report(
        self, eng: Engine, rnd: ProbeRound | None, context: str
    ) -> Attribution | None:
        """An attribution report for ``eng``'s GPUs as an event (and returned)."""
        if rnd is None:
            return None
        engines = (eng, *self._neighbours(eng))
        # One /proc walk, and only when some engine is a real process tree (simulated
        # engines name their pids themselves: their fake pids mean nothing in /proc).
        real = any(e.spec.pids is None and e.spec.adapter.process_root for e in engines)
        table = self._table() if real else None
        trees = {e.id: self._pids_of(e, table) for e in engines}
        report = attribute(rnd, trees, pid_namespace=self.pid_namespace, table=table)
        fields = report.to_event_fields(engine_id=eng.id)
        await self.recorder.emit(
            AttributionReport,
            engine_id=eng.id,
            pipeline_id=eng.spec.pipeline_id,
            gpus=tuple(m.device.key for m in rnd.memory),
            context=context,
            **fields,
        )
        return report


def _keys(eng: Engine) -> tuple[str, ...]:
    return tuple(d.key for d in eng.spec.devices)


def _tags(tags: Sequence[str] | None) -> list[str] | None:
    return None if tags is None else list(tags)


def _tag_text(tags: Sequence[str] | None) -> str:
    return "tags=all" if tags is None else f"tags={','.join(tags)}"


def _version() -> str:
    from offload_fsm import __version__

    return __version__


__all__ = ["Engine", "EngineSpec", "IllegalTransition", "Orchestrator", "OrchestratorConfig"]
