"""Offline replay of a run's event log: re-drive every engine's lifecycle, check invariants.

The log is read line by line (binary, streaming, by :func:`eventlog.read_numbered_events` in
its strict mode, the one log reader): memory grows with the number of engines and
GPUs, never with the number of events. Each logged ``transition`` is checked against the
lifecycle ``TABLE`` (through a string-keyed view of it, built once) and against the state
replay reconstructed; gate decisions, fail-open passes and the run header feed the other
invariants. Rules (``Rule``), as docs/replay.md states them:

0. engines are registered once, before their events;
1. every transition is legal in the table and starts from the replayed state;
2. ``gated -> waking`` only after a wake gate decision that opened with every GPU measured at
   or under a limit within the run's threshold, after the settle window (or a logged
   fail-open pass in a run configured fail-open);
3. no two engines that share a GPU are ``waking``/``active`` together unless they are in the
   same share group;
4. a finished run leaves no engine ``releasing`` or ``gated``;
5. sequence numbers strictly increase; timestamps never go backwards; one run id;
6. a finished run leaves every engine in a final state (active, slept, failed), and nothing
   follows ``run_finished``. A log without ``run_finished`` is flagged *truncated* instead.

A structurally unusable log (undecodable line, no ``run_started`` first, a second run) raises
:class:`EventDecodeError` with the line number; a violation is data, not an exception.
"""

from __future__ import annotations

import enum
import os
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from offload_fsm.errors import EventDecodeError
from offload_fsm.eventlog import ReadReport, TruncatedLine, read_numbered_events
from offload_fsm.events import (
    AdapterCallFailed,
    EngineRegistered,
    Event,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    MemorySample,
    ProbeGaveUp,
    RunFinished,
    RunStarted,
    Transition,
)
from offload_fsm.lifecycle import AWAKE_STATES, FINAL_STATES, TABLE, State

MAX_LINE_BYTES = 1 << 20  # a longer line is not an event: fail instead of buffering it
MAX_VIOLATIONS = 1000  # kept in full; beyond that only counted (memory stays flat)
GIB = 1024**3

# String-keyed views of TABLE (log fields are strings): (src, trigger) -> destinations.
LEGAL: dict[tuple[str, str], frozenset[str]] = {
    (src.value, trig.value): frozenset(d.value for d in dsts) for (src, trig), dsts in TABLE.items()
}
STATE_NAMES: frozenset[str] = frozenset(s.value for s in State)
AWAKE: frozenset[str] = frozenset(s.value for s in AWAKE_STATES)
# States in which an engine may hold its memory (a failed engine's memory is unknown).
HOLDING: frozenset[str] = frozenset(("active", "waking", "releasing", "failed"))
FINAL: frozenset[str] = frozenset(s.value for s in FINAL_STATES)
_GATED, _WAKING, _SLEPT = State.GATED.value, State.WAKING.value, State.SLEPT.value
_FAILED = State.FAILED.value


class Rule(str, enum.Enum):
    REGISTRATION = "0-registration"
    TRANSITION = "1-transition"
    WAKE_GATE = "2-wake-gate"
    GPU_SHARING = "3-gpu-sharing"
    UNFINISHED = "4-unfinished"
    ORDER = "5-order"
    FINAL_STATE = "6-final-state"

    def __str__(self) -> str:
        return self.value


RULE_TEXT: dict[Rule, str] = {
    Rule.REGISTRATION: "engines are registered once, before their events",
    Rule.TRANSITION: "every transition is legal in the table and starts from the replayed state",
    Rule.WAKE_GATE: "no wake without a passing, settled wake gate at or under the threshold "
    "(or a logged fail-open pass)",
    Rule.GPU_SHARING: "engines on the same GPU are never awake together unless they share a group",
    Rule.UNFINISHED: "every releasing ends in slept/failed; every gated in waking/slept/failed",
    Rule.ORDER: "sequence numbers strictly increase, timestamps never go backwards, one run id",
    Rule.FINAL_STATE: "a finished run leaves every engine in a final state",
}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: Rule
    line: int  # 1-based line of the event that broke the rule (the last line for end checks)
    seq: int | None
    engine_id: str | None
    gpus: tuple[str, ...]
    message: str
    ts: float | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" seq {self.seq}" if self.seq is not None else "")
        who = f" engine {self.engine_id}" if self.engine_id else ""
        gpus = f" gpus {','.join(short_gpu(g) for g in self.gpus)}" if self.gpus else ""
        return f"{where} [{self.rule}]{who}{gpus}: {self.message}"


@dataclass(eq=False, slots=True)
class EngineTrack:
    """Everything replay knows about one engine; small and fixed in size."""

    engine_id: str
    role: str
    pipeline_id: str | None
    gpus: tuple[str, ...]
    share_group: str | None
    initial_state: str
    registered_line: int
    state: str
    since_ts: float
    since_seq: int
    since_line: int
    last_trigger: str | None = None
    time_in: dict[str, float] = field(default_factory=dict)
    cycles: int = 0  # completed wakes (waking -> active)
    releases: int = 0
    failures: int = 0
    fail_open_wakes: int = 0
    gate_timeouts: int = 0
    gate_cancels: int = 0
    gate_waits: array[float] = field(default_factory=lambda: array("d"))  # gated -> waking, s
    # rule 2 bookkeeping, reset each time the engine enters gated
    gated_ts: float | None = None
    gated_line: int | None = None
    wake_pass_line: int | None = None
    wake_bad: str | None = None  # why the last opened decision did not count
    last_wake_decision: tuple[int, GateDecision] | None = None
    fail_open_line: int | None = None


@dataclass(eq=False, slots=True)
class GpuTrack:
    key: str
    order: int
    samples: int = 0
    peak_used: int | None = None
    peak_used_ts: float | None = None
    # highest whole-GPU used while no engine on the GPU held memory (all slept or gated), or
    # that a wake gate opened on
    peak_residual: int | None = None
    peak_residual_ts: float | None = None
    holders: int = 0  # engines on this GPU that are active, waking, releasing or failed
    unmeasured: int = 0  # memory samples with unknown used bytes


class Observer(Protocol):
    """Gets every replayed event and every state change (trace and plot are observers)."""

    def event(self, line: int, event: Event) -> None: ...

    def state(
        self, engine: EngineTrack, old: str | None, new: str, ts: float, line: int
    ) -> None: ...


@dataclass(eq=False)
class ReplayResult:
    path: str
    run: RunStarted
    engines: dict[str, EngineTrack]
    gpus: dict[str, GpuTrack]
    violations: list[Violation]
    violation_count: int
    notes: list[str]
    events: int
    lines: int
    kinds: Counter[str]
    failures: Counter[str]  # by kind: "transition:failed", "adapter_call_failed:<type>", ...
    first_ts: float
    last_ts: float
    last_seq: int
    finished: RunFinished | None
    truncated_line: TruncatedLine | None
    until: int | None
    history: list[tuple[int, Transition]] | None  # (line, transition) of --engine, if asked

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def truncated(self) -> bool:
        """The log stops before ``run_finished`` (and replay was not asked to stop early)."""
        return self.until is None and (self.finished is None or self.truncated_line is not None)


def short_gpu(key: str) -> str:
    """``GPU-1a2b3c4d-...`` -> ``GPU-1a2b3c4d`` (node prefixes kept)."""
    node, _, uuid = key.rpartition("/")
    head = uuid.split("-")
    short = "-".join(head[:2]) if len(head) > 2 and head[0] == "GPU" else uuid
    return f"{node}/{short}" if node else short


def gib(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else f"{nbytes / GIB:.1f} GiB"


# --- replay -------------------------------------------------------------------------------


class Replayer:
    """Feed it events in log order; ``finish()`` runs the end-of-run checks."""

    def __init__(
        self,
        *,
        path: str = "<events>",
        history_for: str | None = None,
        observers: Sequence[Observer] = (),
        max_violations: int = MAX_VIOLATIONS,
    ) -> None:
        self.path = path
        self.run: RunStarted | None = None
        self.engines: dict[str, EngineTrack] = {}
        self.gpus: dict[str, GpuTrack] = {}
        self.violations: list[Violation] = []
        self.violation_count = 0
        self.notes: list[str] = []
        self.failures: Counter[str] = Counter()
        self.first_ts = 0.0
        self._run_id: str | None = None
        self._seq = 0  # the highest seq so far
        self._ts = 0.0  # the latest ts so far
        self._counts: defaultdict[type[Event], int] = defaultdict(int)
        self.last_line = 0
        self.finished: RunFinished | None = None
        self._finished_line = 0
        self._max_violations = max_violations
        self._observers = tuple(observers)
        self._history_for = history_for
        self.history: list[tuple[int, Transition]] | None = [] if history_for else None
        self._awake: dict[str, set[str]] = {}  # gpu -> engines waking/active on it
        self._after_finish_flagged = False
        self._handlers: dict[type[Event], Callable[[int, Event], None]] = {
            Transition: self._transition,  # type: ignore[dict-item]
            MemorySample: self._memory,  # type: ignore[dict-item]
            GateDecision: self._gate_decision,  # type: ignore[dict-item]
            GateFailOpen: self._fail_open,  # type: ignore[dict-item]
            GateTimedOut: self._gate_timed_out,  # type: ignore[dict-item]
            EngineRegistered: self._register,  # type: ignore[dict-item]
            RunFinished: self._run_finished,  # type: ignore[dict-item]
            AdapterCallFailed: self._adapter_failed,  # type: ignore[dict-item]
            ProbeGaveUp: self._probe_gave_up,  # type: ignore[dict-item]
            RunStarted: self._second_run,  # type: ignore[dict-item]
        }

    # -- envelope --------------------------------------------------------------------------

    def feed(self, line: int, event: Event) -> None:
        # The hot path (every event): plain attribute reads, no formatting unless it breaks.
        self.last_line = line
        if self._run_id is None:
            self._first(line, event)
            return
        kind = type(event)
        self._counts[kind] += 1
        seq, ts = event.seq, event.ts
        if seq > self._seq:
            self._seq = seq
        else:
            what = "repeats" if seq == self._seq else "goes back from"
            self._violate(Rule.ORDER, line, event, f"seq {seq} {what} seq {self._seq}")
        if ts >= self._ts:
            self._ts = ts
        else:
            self._violate(
                Rule.ORDER, line, event, f"ts {ts} is {self._ts - ts:.6f} s before the last"
            )
        if event.run_id != self._run_id or self._finished_line:
            self._envelope(line, event)
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(line, event)
        if self._observers:
            for obs in self._observers:
                obs.event(line, event)

    def _envelope(self, line: int, event: Event) -> None:
        if event.run_id != self._run_id:
            self._violate(
                Rule.ORDER, line, event, f"run id {event.run_id!r} in run {self._run_id!r}'s log"
            )
        if self._finished_line and not self._after_finish_flagged:
            self._after_finish_flagged = True
            self._violate(
                Rule.FINAL_STATE,
                line,
                event,
                f"{event.kind} after run_finished (line {self._finished_line})",
            )

    def _first(self, line: int, event: Event) -> None:
        if not isinstance(event, RunStarted):
            raise EventDecodeError(
                f"a run's log starts with run_started, not {event.kind}", line=line, field="kind"
            )
        self.run = event
        self._run_id = event.run_id
        self._counts[RunStarted] += 1
        self.first_ts = self._ts = event.ts
        self._seq = event.seq
        if event.threshold_bytes is None:
            self.notes.append(
                "the run had no wake gate (threshold_bytes is null): rule 2 is not checked"
            )
        for obs in self._observers:
            obs.event(line, event)

    def _second_run(self, line: int, event: RunStarted) -> None:
        assert self.run is not None
        raise EventDecodeError(
            f"a second run_started (run {event.run_id!r}) in run {self.run.run_id!r}'s log: "
            "replay one run per file",
            line=line,
            field="kind",
        )

    def _violate(
        self,
        rule: Rule,
        line: int,
        event: Event | None,
        message: str,
        *,
        engine_id: str | None = None,
        gpus: tuple[str, ...] | None = None,
    ) -> None:
        self.violation_count += 1
        if len(self.violations) >= self._max_violations:
            return
        if engine_id is None and event is not None:
            engine_id = event.engine_id
        self.violations.append(
            Violation(
                rule=rule,
                line=line,
                seq=event.seq if event is not None else None,
                engine_id=engine_id,
                gpus=gpus if gpus is not None else (event.gpus if event is not None else ()),
                message=message,
                ts=event.ts if event is not None else self._ts,
            )
        )

    def _engine(self, line: int, event: Event) -> EngineTrack | None:
        eid = event.engine_id
        eng = self.engines.get(eid) if eid is not None else None
        if eng is None:
            self._violate(
                Rule.REGISTRATION,
                line,
                event,
                f"{event.kind} for engine {eid!r}, which was not registered",
            )
        return eng

    # -- kinds -----------------------------------------------------------------------------

    def _register(self, line: int, ev: EngineRegistered) -> None:
        eid = ev.engine_id
        if eid is None:
            self._violate(Rule.REGISTRATION, line, ev, "engine_registered without an engine_id")
            return
        if eid in self.engines:
            prior = self.engines[eid].registered_line
            self._violate(Rule.REGISTRATION, line, ev, f"registered again (first at line {prior})")
            return
        if ev.initial_state not in STATE_NAMES:
            self._violate(
                Rule.REGISTRATION, line, ev, f"unknown initial_state {ev.initial_state!r}"
            )
            return
        eng = EngineTrack(
            engine_id=eid,
            role=ev.role,
            pipeline_id=ev.pipeline_id,
            gpus=ev.gpus,
            share_group=ev.share_group or None,
            initial_state=ev.initial_state,
            registered_line=line,
            state=ev.initial_state,
            since_ts=ev.ts,
            since_seq=ev.seq,
            since_line=line,
        )
        self.engines[eid] = eng
        for gpu in ev.gpus:
            self._gpu(gpu).holders += eng.state in HOLDING
        if eng.state in AWAKE:
            self._enter_awake(eng, line, ev)
        for obs in self._observers:
            obs.state(eng, None, eng.state, ev.ts, line)

    def _transition(self, line: int, ev: Transition) -> None:
        eng = self._engine(line, ev)
        if eng is None:
            return
        src, dst, trig = ev.src, ev.dst, ev.trigger
        if src != eng.state:
            self._violate(
                Rule.TRANSITION,
                line,
                ev,
                f"logged {src} -> {dst} ({trig}) but the replayed state is {eng.state}",
                gpus=eng.gpus,
            )
        options = LEGAL.get((src, trig))
        if options is None or dst not in options:
            self._violate(
                Rule.TRANSITION,
                line,
                ev,
                f"{src} -> {dst} by {trig!r} is not in the lifecycle table",
                gpus=eng.gpus,
            )
        elif trig == "fail" and not ev.reason:
            self._violate(Rule.TRANSITION, line, ev, "fail without a reason", gpus=eng.gpus)
        elif trig == "recover" and not ev.evidence:
            self._violate(Rule.TRANSITION, line, ev, "recover without evidence", gpus=eng.gpus)
        if self.history is not None and eng.engine_id == self._history_for:
            self.history.append((line, ev))
        if dst not in STATE_NAMES:
            return  # already a violation; keep the replayed state
        self._enter(eng, dst, trig, line, ev)

    def _enter(self, eng: EngineTrack, dst: str, trig: str, line: int, ev: Event) -> None:
        old, ts = eng.state, ev.ts
        eng.time_in[old] = eng.time_in.get(old, 0.0) + (ts - eng.since_ts)
        eng.state, eng.since_ts, eng.since_seq, eng.since_line = dst, ts, ev.seq, line
        eng.last_trigger = trig
        if dst == _WAKING:
            self._check_wake(eng, line, ev)
            if old == _GATED and eng.gated_ts is not None:
                eng.gate_waits.append(ts - eng.gated_ts)
        elif dst == _GATED:
            eng.gated_ts, eng.gated_line = ts, line
            eng.wake_pass_line = eng.fail_open_line = None
            eng.wake_bad = eng.last_wake_decision = None
        elif dst == _SLEPT and old == _GATED:
            if trig == "gate_timeout":
                eng.gate_timeouts += 1
            else:
                eng.gate_cancels += 1
        if dst == _FAILED:
            eng.failures += 1
            self.failures[f"transition:{old}->failed"] += 1
        if trig == "woken":
            eng.cycles += 1
        elif trig == "release":
            eng.releases += 1
        if dst != _GATED and old == _GATED:
            eng.gated_ts = eng.gated_line = None
        holds = (dst in HOLDING) - (old in HOLDING)
        if holds:
            for gpu in eng.gpus:
                self.gpus[gpu].holders += holds
        now_awake, was_awake = dst in AWAKE, old in AWAKE
        if now_awake and not was_awake:
            self._enter_awake(eng, line, ev)
        elif was_awake and not now_awake:
            for gpu in eng.gpus:
                self._awake[gpu].discard(eng.engine_id)
        for obs in self._observers:
            obs.state(eng, old, dst, ts, line)

    def _enter_awake(self, eng: EngineTrack, line: int, ev: Event) -> None:
        clash: dict[str, list[str]] = {}
        for gpu in eng.gpus:
            on_gpu = self._awake.setdefault(gpu, set())
            for other_id in on_gpu:
                other = self.engines[other_id]
                if eng.share_group is None or other.share_group != eng.share_group:
                    clash.setdefault(other_id, []).append(gpu)
            on_gpu.add(eng.engine_id)
        for other_id, gpus in sorted(clash.items()):
            other = self.engines[other_id]
            self._violate(
                Rule.GPU_SHARING,
                line,
                ev,
                f"{eng.state} while {other_id} is {other.state} on the same GPU(s) "
                f"(share groups {eng.share_group!r} / {other.share_group!r})",
                engine_id=eng.engine_id,
                gpus=tuple(gpus),
            )

    def _check_wake(self, eng: EngineTrack, line: int, ev: Event) -> None:
        run = self.run
        assert run is not None
        if run.threshold_bytes is None or eng.wake_pass_line is not None:
            return
        if eng.fail_open_line is not None:
            eng.fail_open_wakes += 1
            return
        since = (
            f"since it entered gated at line {eng.gated_line}"
            if eng.gated_line is not None
            else "and it was not gated"
        )
        last = eng.last_wake_decision
        detail = (
            eng.wake_bad
            or (
                last
                and f"the last wake decision (line {last[0]}) stayed closed: {_observed(last[1])}"
            )
            or "no wake gate decision was logged"
        )
        self._violate(
            Rule.WAKE_GATE,
            line,
            ev,
            f"entered waking without a passing wake gate decision {since}; {detail}",
            engine_id=eng.engine_id,
            gpus=eng.gpus,
        )

    def _gate_decision(self, line: int, ev: GateDecision) -> None:
        if ev.gate != "wake":
            return
        if ev.opened:
            # What the engine is about to wake onto (memory samples are only logged when
            # memory moves; the reading that opened the gate is the residual that counts).
            gpus = self.gpus
            for gpu, nbytes in zip(ev.gpus, ev.observed_bytes, strict=False):
                track = gpus.get(gpu)
                if track is None or nbytes is None:
                    continue
                if track.peak_residual is None or nbytes > track.peak_residual:
                    track.peak_residual, track.peak_residual_ts = nbytes, ev.ts
        if ev.engine_id is None:
            return  # a gate evaluated outside any engine (e.g. the CLI): nothing to wake
        eng = self._engine(line, ev)
        if eng is None or eng.state != _GATED:
            return
        # Only the latest wake decision counts: a gate that opened and was then re-run
        # (a blocker appeared) must open again before the wake.
        eng.wake_pass_line = eng.wake_bad = None
        if not ev.opened:
            eng.last_wake_decision = (line, ev)  # formatted only if a violation needs it
            return
        problems = self._wake_problems(eng, ev)
        if problems:
            eng.wake_bad = f"the gate opened at line {line} but " + "; ".join(problems)
        else:
            eng.wake_pass_line = line

    def _wake_problems(self, eng: EngineTrack, ev: GateDecision) -> list[str]:
        run = self.run
        assert run is not None
        threshold = run.threshold_bytes
        limit = ev.limit_bytes
        problems: list[str] = []
        if len(ev.observed_bytes) != len(ev.gpus):
            problems.append(
                f"it has {len(ev.observed_bytes)} observed values for {len(ev.gpus)} GPUs"
            )
        missed = [g for g in eng.gpus if g not in ev.gpus]
        if missed:
            problems.append(f"it did not measure {', '.join(short_gpu(g) for g in missed)}")
        if limit is None:
            problems.append("it had no limit")
        elif threshold is not None and limit > threshold:
            problems.append(f"its limit {gib(limit)} is above the run's threshold {gib(threshold)}")
        for gpu, nbytes in zip(ev.gpus, ev.observed_bytes, strict=False):
            if nbytes is None:
                problems.append(f"{short_gpu(gpu)} was not measured")
            elif limit is not None and nbytes > limit:
                problems.append(f"{short_gpu(gpu)} used {gib(nbytes)} > limit {gib(limit)}")
        if ev.settle_count < ev.settle_required:
            problems.append(f"it settled {ev.settle_count} of {ev.settle_required} rounds")
        if ev.settle_required < run.settle_samples:
            problems.append(
                f"its settle window {ev.settle_required} is shorter than the run's "
                f"{run.settle_samples}"
            )
        return problems

    def _fail_open(self, line: int, ev: GateFailOpen) -> None:
        self.failures[f"gate_fail_open:{ev.gate}"] += 1
        if ev.gate != "wake" or ev.engine_id is None:
            return
        eng = self._engine(line, ev)
        if eng is None:
            return
        run = self.run
        assert run is not None
        if not run.fail_open:
            self._violate(
                Rule.WAKE_GATE,
                line,
                ev,
                "a fail-open pass in a run configured fail_open=false",
                gpus=eng.gpus,
            )
        elif eng.state == _GATED:
            eng.fail_open_line = line

    def _gate_timed_out(self, line: int, ev: GateTimedOut) -> None:
        self.failures[f"gate_timed_out:{ev.gate}"] += 1

    def _adapter_failed(self, line: int, ev: AdapterCallFailed) -> None:
        self.failures[f"adapter_call_failed:{ev.call}:{ev.error_type}"] += 1

    def _probe_gave_up(self, line: int, ev: ProbeGaveUp) -> None:
        self.failures[f"probe_gave_up:{ev.error_type}"] += 1

    def _memory(self, line: int, ev: MemorySample) -> None:
        for gpu in ev.gpus:
            track = self.gpus.get(gpu) or self._gpu(gpu)
            track.samples += 1
            used = ev.used_bytes
            if used is None:
                track.unmeasured += 1
                continue
            if track.peak_used is None or used > track.peak_used:
                track.peak_used, track.peak_used_ts = used, ev.ts
            if not track.holders and (track.peak_residual is None or used > track.peak_residual):
                track.peak_residual, track.peak_residual_ts = used, ev.ts

    def _run_finished(self, line: int, ev: RunFinished) -> None:
        if self.finished is None:
            self.finished = ev
            self._finished_line = line

    def _gpu(self, key: str) -> GpuTrack:
        track = self.gpus.get(key)
        if track is None:
            track = self.gpus[key] = GpuTrack(key, len(self.gpus))
        return track

    # -- end -------------------------------------------------------------------------------

    def finish(
        self, *, truncated_line: TruncatedLine | None = None, until: int | None = None
    ) -> ReplayResult:
        if self.run is None:
            where = (
                f"its only line ({truncated_line.line}) is cut short: {truncated_line.detail}"
                if truncated_line
                else "it has no events"
            )
            raise EventDecodeError(f"not a replayable log: {where}", line=self.last_line or None)
        end_ts = self._ts
        for eng in self.engines.values():
            eng.time_in[eng.state] = eng.time_in.get(eng.state, 0.0) + (end_ts - eng.since_ts)
            eng.since_ts = end_ts
        if truncated_line is not None:
            self.notes.append(
                f"line {truncated_line.line} is cut short ({truncated_line.size} bytes, "
                f"a crash mid-write?) and was not replayed: {truncated_line.detail}"
            )
        if until is None:
            self._end_checks(truncated_line)
        return ReplayResult(
            path=self.path,
            run=self.run,
            engines=self.engines,
            gpus=self.gpus,
            violations=self.violations,
            violation_count=self.violation_count,
            notes=self.notes,
            events=sum(self._counts.values()),
            lines=self.last_line,
            kinds=Counter({k.kind: n for k, n in self._counts.items()}),
            failures=self.failures,
            first_ts=self.first_ts,
            last_ts=self._ts,
            last_seq=self._seq,
            finished=self.finished,
            truncated_line=truncated_line,
            until=until,
            history=self.history,
        )

    def _end_checks(self, truncated_line: TruncatedLine | None) -> None:
        unfinished = [e for e in self.engines.values() if e.state not in FINAL]
        if self.finished is None or truncated_line is not None:
            where = ", ".join(f"{e.engine_id}={e.state}" for e in unfinished)
            self.notes.append(
                "truncated: the log ends without run_finished"
                + (f"; engines not in a final state: {where}" if where else "")
            )
            return
        end = self._finished_line
        for eng in unfinished:
            rule = Rule.UNFINISHED if eng.state in ("releasing", _GATED) else Rule.FINAL_STATE
            self._violate(
                rule,
                end,
                self.finished,
                f"the run finished with the engine {eng.state} (since line {eng.since_line})",
                engine_id=eng.engine_id,
                gpus=eng.gpus,
            )


def _observed(ev: GateDecision) -> str:
    parts = [f"{short_gpu(g)}={gib(b)}" for g, b in zip(ev.gpus, ev.observed_bytes, strict=False)]
    return f"{', '.join(parts)} vs limit {gib(ev.limit_bytes)}"


def replay_path(
    path: str | os.PathLike[str],
    *,
    until: int | None = None,
    history_for: str | None = None,
    observers: Sequence[Observer] = (),
) -> ReplayResult:
    """Replay the log at ``path``; stop after the last event with ``seq <= until``."""
    report = ReadReport(os.fspath(path))
    reader = read_numbered_events(
        path, report=report, max_line_bytes=MAX_LINE_BYTES, strict_last_line=True
    )
    replayer = Replayer(path=report.path, history_for=history_for, observers=observers)
    feed = replayer.feed
    if until is None:
        for line, event in reader:
            feed(line, event)
    else:
        for line, event in reader:
            if event.seq > until and replayer.run is not None:
                break
            feed(line, event)
    cut = report.truncated  # a cut last line that still held an event was replayed
    return replayer.finish(truncated_line=cut if cut and not cut.kept else None, until=until)


__all__ = [
    "LEGAL",
    "RULE_TEXT",
    "EngineTrack",
    "GpuTrack",
    "Observer",
    "ReplayResult",
    "Replayer",
    "Rule",
    "TruncatedLine",
    "Violation",
    "gib",
    "replay_path",
    "short_gpu",
]
