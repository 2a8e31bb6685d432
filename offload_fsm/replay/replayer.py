"""The replayer: feeds each logged event, in log order, to the handler of its kind.

Here: the envelope (rule 5: seq, ts and run id; rule 6: nothing after ``run_finished``; one
run per log), registrations (rule 0), transitions against the table (rule 1), GPU sharing
(rule 3), memory peaks and failure counts. Rule 2 is in wake_gate.py; the state and the end of
a run (rules 4 and 6) are in state.py. :func:`replay_path` streams a log file through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from offload_fsm.core.errors import ConfigError, EventDecodeError
from offload_fsm.core.lifecycle import State
from offload_fsm.core.limits import check_threshold_bytes
from offload_fsm.events.eventlog import ReadReport, read_numbered_events
from offload_fsm.events.kinds import (
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
from offload_fsm.replay.rules import AWAKE, HOLDING, LEGAL, STATE_NAMES, Rule
from offload_fsm.replay.state import MAX_VIOLATIONS
from offload_fsm.replay.tracks import EngineTrack, Observer, ReplayResult
from offload_fsm.replay.wake_gate import WakeGateChecks

MAX_LINE_BYTES = 1 << 20  # a longer line is not an event: fail instead of buffering it
_GATED, _WAKING, _SLEPT = State.GATED.value, State.WAKING.value, State.SLEPT.value
_FAILED = State.FAILED.value


class Replayer(WakeGateChecks):
    """Feed it events in log order; ``finish()`` runs the end-of-run checks."""

    def __init__(
        self,
        *,
        path: str = "<events>",
        history_for: str | None = None,
        observers: Sequence[Observer] = (),
        max_violations: int = MAX_VIOLATIONS,
    ) -> None:
        super().__init__(
            path=path, history_for=history_for, observers=observers, max_violations=max_violations
        )
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
        # Every event passes here: messages are formatted only for what breaks.
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
        if event.threshold_bytes is not None:
            try:
                check_threshold_bytes(
                    "run_started.threshold_bytes", event.threshold_bytes, event.threshold_bytes
                )
            except ConfigError as exc:
                raise EventDecodeError(str(exc), line=line, field="threshold_bytes") from None
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
