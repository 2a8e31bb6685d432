"""The state of a replay: what it knows so far, how it records a violation, and how it ends
(time accounting, the end-of-run rules 4 and 6, the :class:`ReplayResult`).

:class:`Replayer` (replayer.py) is this state plus the per-kind handlers that advance it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from offload_fsm.core.errors import EventDecodeError
from offload_fsm.core.lifecycle import State
from offload_fsm.events.eventlog import TruncatedLine
from offload_fsm.events.kinds import Event, RunFinished, RunStarted, Transition
from offload_fsm.replay.rules import FINAL, Rule, Violation
from offload_fsm.replay.tracks import EngineTrack, GpuTrack, Observer, ReplayResult

MAX_VIOLATIONS = 1000  # kept in full; beyond that only counted (memory stays flat)
_GATED = State.GATED.value


class ReplayState:
    """The replayed run so far; the handlers in :class:`Replayer` advance it."""

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
