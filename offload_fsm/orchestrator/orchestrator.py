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

The data types live in engines/spec.py and settings.py; the gates this class drives in gates/
(gate.py, conditions.py, group.py, engine_memory.py, gpu_sharing.py), one engine call in
engine_call.py, and where an interruption leaves an engine in core/interruptions.py; the
public names are importable from here as well.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel

from offload_fsm.core.errors import ConfigError, IllegalTransition
from offload_fsm.core.interruptions import failure_reason, gated_exit
from offload_fsm.core.lifecycle import Evidence, Lifecycle, State, Trigger
from offload_fsm.core.redact import redact_optional
from offload_fsm.engines.spec import HISTORY_LEN, Engine, EngineSpec, PidsFn
from offload_fsm.events.bus import Recorder
from offload_fsm.events.kinds import EngineRegistered, RunFinished, RunStarted, Transition
from offload_fsm.gates.conditions import ReleaseCondition, ResumeCondition
from offload_fsm.gates.engine_memory import engine_pids, report_attribution, resident_now
from offload_fsm.gates.gate import GateContext, GateResult, NudgeHub, run_gate
from offload_fsm.gates.gpu_sharing import blocking, check_wake_group, conflicts, neighbours
from offload_fsm.gates.group import emit_member_decisions, wake_group_gate
from offload_fsm.orchestrator.engine_call import call_engine, tag_list, tag_text
from offload_fsm.probe.attribution import Attribution
from offload_fsm.probe.base import GpuDevice, ProbeBackend, ProbeRound, rounds_are_cheap
from offload_fsm.probe.processes import ProcessTable, detect_pid_namespace, read_process
from offload_fsm.probe.shared import SharedRounds
from offload_fsm.settings import GatePolicy, OrchestratorConfig, check_threshold_fits
from offload_fsm.timing.clock import Clock, RealClock
from offload_fsm.timing.concurrency import all_or_first_error
from offload_fsm.timing.deadlines import RoundDeadlines


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
        self.recorder = recorder
        self.config = config
        self.probe = probe
        self.clock: Clock = clock or recorder.clock or RealClock()
        self.engines: dict[str, Engine] = {}
        self._by_gpu: dict[str, list[Engine]] = {}  # device key -> engines using it
        # engine id -> (engines sharing a GPU with it, those it conflicts with), until the
        # next registration: asked on every round of every wake gate.
        self._sharing: dict[str, tuple[list[Engine], list[Engine]]] = {}
        self.nudges = NudgeHub()  # wakes the gates on a GPU whenever its memory may have moved
        self.pid_namespace = config.pid_namespace or detect_pid_namespace(config.proc_root)

    @property
    def probe(self) -> ProbeBackend:
        """The probe backend (assignable: the gates poll the new one from then on)."""
        return self._probe

    @probe.setter
    def probe(self, probe: ProbeBackend) -> None:
        self._probe = probe
        # What gates and residual checks poll: one round for the gates polling at once,
        # unless a round costs less than sharing it.
        share = self.config.share_probe_rounds
        if share is None:
            share = not rounds_are_cheap(probe)
        self.rounds = SharedRounds(probe) if share else probe

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
        """Write ``run_finished``; ``reason`` (often an error's text) is redacted."""
        with anyio.CancelScope(shield=True):
            await self.recorder.emit(RunFinished, status=status, reason=redact_optional(reason))

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
        self._sharing.clear()
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
            # Each engine call and probe round of the operation has a deadline of its own.
            with RoundDeadlines(self.clock) as calls:
                await self._call(
                    eng,
                    calls,
                    "prepare_release",
                    eng.spec.adapter.prepare_release,
                    self.config.drain_timeout_s,
                )
                eng.resident_before = await self._resident_now(eng, calls)
                await self._tagged_call(eng, calls, "release", eng.spec.adapter.release, tags)
                self.nudges.nudge(eng.gpus)  # memory on these GPUs may just have moved
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
                    calls,
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
        check_wake_group(self._by_gpu, group)  # members that would share a GPU awake: refused
        for eng in group:  # all legal, or nothing changes
            if not eng.lifecycle.can(Trigger.REQUEST_WAKE):
                raise IllegalTransition(eng.id, eng.state.value, Trigger.REQUEST_WAKE.value)
        await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled already: touch nothing
        for eng in group:
            await self._emit_transition(eng, eng.lifecycle.fire(Trigger.REQUEST_WAKE))
        try:
            result = await wake_group_gate(
                group,
                gate_over=self._gate_over,
                blockers=lambda: [b for e in group for b in self.blockers(e.id)],
                policy=self.config.wake_gate,
                threshold_bytes=self.config.threshold_bytes,
                clock=self.clock,
            )
        except BaseException as exc:
            for eng in group:
                await self._leave_gated(eng, exc)
            raise
        # Decide: no await between the final blocker check (in wake_group_gate) and these
        # triggers, so no other wake can open on these GPUs on the same reading. Then tell:
        # the members' decisions, then their transitions (the log records every one made).
        reason = "FAIL-OPEN: gate opened unmeasured" if result.fail_open else None
        steps = [eng.lifecycle.fire(Trigger.GATE_OPEN, reason=reason) for eng in group]
        with anyio.CancelScope(shield=True):
            await emit_member_decisions(
                group, result, self.config.wake_gate, self.config.threshold_bytes, self.recorder
            )
        for eng, step in zip(group, steps, strict=True):
            await self._emit_transition(eng, step)
        await all_or_first_error([partial(self._resume, eng, tags) for eng in group])

    async def _resume(self, eng: Engine, tags: Sequence[str] | None) -> None:
        try:
            with RoundDeadlines(self.clock) as calls:
                await self._tagged_call(eng, calls, "resume", eng.spec.adapter.resume, tags)
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
                        calls,
                    )
                await self._call(eng, calls, "finish_wake", eng.spec.adapter.finish_wake)
            await self._fire(eng, Trigger.WOKEN)
        except BaseException as exc:
            await self._fail_after(eng, exc, "wake")
            raise

    def blockers(self, engine_id: str) -> list[str]:
        """Engines that must not be awake on ``engine_id``'s GPUs while it wakes."""
        return blocking(self._sharing_of(self.engine(engine_id))[1])

    def _sharing_of(self, eng: Engine) -> tuple[list[Engine], list[Engine]]:
        found = self._sharing.get(eng.id)
        if found is None:
            found = self._sharing[eng.id] = (
                neighbours(self._by_gpu, eng),
                conflicts(self._by_gpu, eng),
            )
        return found

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
        dst: str = step.dst.value
        eng.history.append(dst)
        if step.dst in (State.SLEPT, State.FAILED):
            self.nudges.nudge(eng.gpus)  # memory or a blocker on these GPUs may have gone
        fields = {
            "engine_id": eng.id,
            "pipeline_id": eng.spec.pipeline_id,
            "gpus": eng.gpus,
            "src": step.src.value,
            "dst": dst,
            "trigger": step.trigger.value,
            "reason": step.reason,
            "evidence": evidence,
        }
        if self.recorder.emit_now(Transition, **fields) is None:
            with anyio.CancelScope(shield=True):  # the log must record every transition made
                await self.recorder.emit(Transition, **fields)

    async def _leave_gated(self, eng: Engine, exc: BaseException) -> None:
        if eng.state is State.GATED:
            trigger, reason = gated_exit(exc)
            await self._emit_transition(eng, eng.lifecycle.fire(trigger, reason=reason))

    async def _fail_after(self, eng: Engine, exc: BaseException, during: str) -> None:
        if eng.state in (State.RELEASING, State.WAKING):
            reason = failure_reason(exc, during)
            await self._emit_transition(eng, eng.lifecycle.fire(Trigger.FAIL, reason=reason))

    def _call(
        self,
        eng: Engine,
        deadlines: RoundDeadlines,
        name: str,
        fn: Callable[..., Awaitable[None]],
        *args: Any,
        detail: str = "",
    ) -> Coroutine[Any, Any, None]:
        return call_engine(
            eng,
            name,
            fn,
            *args,
            recorder=self.recorder,
            clock=self.clock,
            deadlines=deadlines,
            timeout_s=self.config.call_timeout_s,
            detail=detail,
        )

    def _tagged_call(
        self,
        eng: Engine,
        deadlines: RoundDeadlines,
        name: str,
        fn: Callable[[list[str] | None], Awaitable[None]],
        tags: Sequence[str] | None,
    ) -> Coroutine[Any, Any, None]:
        """A release or resume call: its tags as the argument and as the events' detail."""
        return self._call(eng, deadlines, name, fn, tag_list(tags), detail=tag_text(tags))

    async def _gate(
        self, eng: Engine, condition: Any, policy: GatePolicy, deadlines: RoundDeadlines
    ) -> GateResult:
        return await self._gate_over([eng], eng.spec.devices, condition, policy, deadlines)

    async def _gate_over(
        self,
        group: list[Engine],
        devices: tuple[GpuDevice, ...],
        condition: Any,
        policy: GatePolicy,
        deadlines: RoundDeadlines | None = None,
    ) -> GateResult:
        """Run one gate for ``group`` (its events name the engine when there is one), its
        rounds' deadlines armed on ``deadlines`` where the calling operation has one."""
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
                probe=self.rounds,
                policy=policy,
                clock=self.clock,
                recorder=self.recorder,
                ctx=ctx,
                deadlines=deadlines,
            )

    # engine_memory.py, bound to this orchestrator's probe, clock and /proc settings.

    def _pids_of(self, eng: Engine, table: ProcessTable | None = None) -> frozenset[int]:
        return engine_pids(eng, self.config.proc_root, table)

    def _resident_now(
        self, eng: Engine, deadlines: RoundDeadlines
    ) -> Coroutine[Any, Any, int | None]:
        return resident_now(
            eng,
            probe=self.rounds,
            deadlines=deadlines,
            probe_timeout_s=self.config.release_gate.probe_timeout_s,
            proc_root=self.config.proc_root,
            pid_namespace=self.pid_namespace,
        )

    def _report(
        self, eng: Engine, rnd: ProbeRound | None, context: str
    ) -> Coroutine[Any, Any, Attribution | None]:
        """An attribution report for ``eng``'s GPUs as an event (and returned)."""
        return report_attribution(
            eng,
            self._sharing_of(eng)[0],
            rnd,
            context,
            recorder=self.recorder,
            proc_root=self.config.proc_root,
            pid_namespace=self.pid_namespace,
        )


def _version() -> str:
    from offload_fsm import __version__

    return __version__


__all__ = [
    "HISTORY_LEN",
    "Engine",
    "EngineSpec",
    "IllegalTransition",
    "Orchestrator",
    "OrchestratorConfig",
    "PidsFn",
]
