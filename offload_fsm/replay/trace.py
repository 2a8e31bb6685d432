"""Chrome / Perfetto trace-event JSON from an event log (no extra dependency).

Layout (open the file in ui.perfetto.dev or chrome://tracing):

- process 1 "engines": per engine a thread with one ``X`` slice per lifecycle state (the
  ``gated`` slices are the gate waits), instants for gate decisions, fail-open passes, gate
  timeouts and violations; and a second thread with its adapter calls as ``X`` slices.
  Driver phases (``phase_changed``) are slices on one thread per pipeline.
- one process per GPU: ``C`` counters of used memory and the run's threshold, in GiB.

Times are microseconds since ``run_started``. The file is written while the log is replayed
(one JSON object per line inside the ``traceEvents`` array), so memory stays flat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Any

import msgspec

from offload_fsm.core.redact import redact, redact_optional
from offload_fsm.core.safe_output import atomic_output, check_output
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    AdapterCallFinished,
    AdapterCallStarted,
    Event,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    MemorySample,
    PhaseChanged,
    RunFinished,
    RunStarted,
)
from offload_fsm.replay import GIB, EngineTrack, ReplayResult, replay_path, short_gpu

ENGINES_PID = 1
GPU_PID_BASE = 100
PHASE_TID_BASE = 100_000


@dataclass(frozen=True, slots=True)
class TraceStats:
    trace_events: int
    engines: int
    gpus: int
    violations: int


class TraceWriter:
    """A replay observer that streams trace events to ``out`` (binary)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._encode = msgspec.json.Encoder().encode
        self._count = 0
        self._t0: float | None = None
        self._threshold: int | None = None
        self._run_id = ""
        self._tids: dict[str, int] = {}
        self._engine_names: dict[str, str] = {}
        self._spans: dict[str, tuple[str, float, int]] = {}  # engine -> (state, since, line)
        self._calls: dict[str, tuple[str, float]] = {}  # engine -> (call, started)
        self._gpu_pids: dict[str, int] = {}
        self._phases: dict[str, tuple[int, str, float]] = {}  # pipeline -> (tid, name, since)
        out.write(b'{"traceEvents":[\n')

    # -- output ------------------------------------------------------------------------------

    def _emit(self, ev: dict[str, Any]) -> None:
        if self._count:
            self._out.write(b",\n")
        self._out.write(self._encode(ev))
        self._count += 1

    def _us(self, ts: float) -> float:
        assert self._t0 is not None
        return round((ts - self._t0) * 1e6, 3)

    def _span(self, name: str, tid: int, start: float, end: float, **args: Any) -> None:
        self._emit(
            {
                "ph": "X",
                "name": name,
                "cat": "state",
                "pid": ENGINES_PID,
                "tid": tid,
                "ts": self._us(start),
                "dur": max(0.0, round((end - start) * 1e6, 3)),
                "args": args,
            }
        )

    def _instant(self, name: str, ts: float, tid: int | None, cat: str, **args: Any) -> None:
        ev: dict[str, Any] = {
            "ph": "i",
            "name": name,
            "cat": cat,
            "pid": ENGINES_PID,
            "tid": tid if tid is not None else 0,
            "ts": self._us(ts),
            "s": "t" if tid is not None else "g",
            "args": args,
        }
        self._emit(ev)

    def _counter(self, gpu: str, name: str, ts: float, value: float) -> None:
        self._emit(
            {
                "ph": "C",
                "name": name,
                "pid": self._gpu_pid(gpu),
                "tid": 0,
                "ts": self._us(ts),
                "args": {"GiB": round(value, 4)},
            }
        )

    def _gpu_pid(self, gpu: str) -> int:
        pid = self._gpu_pids.get(gpu)
        if pid is None:
            pid = self._gpu_pids[gpu] = GPU_PID_BASE + len(self._gpu_pids)
            if self._threshold is not None and self._t0 is not None:
                self._counter(gpu, "threshold GiB", self._t0, self._threshold / GIB)
        return pid

    # -- observer ----------------------------------------------------------------------------

    def state(self, engine: EngineTrack, old: str | None, new: str, ts: float, line: int) -> None:
        eid = engine.engine_id
        if eid not in self._tids:
            self._tids[eid] = 2 * len(self._tids) + 1
            gpus = ",".join(short_gpu(g) for g in engine.gpus)
            self._engine_names[eid] = f"{eid} ({engine.role}: {gpus})"
            for gpu in engine.gpus:
                self._gpu_pid(gpu)
        prev = self._spans.get(eid)
        if prev is not None:
            self._span(prev[0], self._tids[eid], prev[1], ts, line=prev[2], next=new)
        self._spans[eid] = (new, ts, line)

    def event(self, line: int, event: Event) -> None:
        if isinstance(event, MemorySample):
            if event.used_bytes is not None:
                for gpu in event.gpus:
                    self._counter(gpu, "used GiB", event.ts, event.used_bytes / GIB)
        elif isinstance(event, GateDecision):
            self._gate_decision(line, event)
        elif isinstance(event, AdapterCallStarted):
            if event.engine_id is not None:
                self._calls[event.engine_id] = (event.call, event.ts)
        elif isinstance(event, (AdapterCallFinished, AdapterCallFailed)):
            self._call_ended(line, event)
        elif isinstance(event, GateFailOpen):
            self._instant(
                f"FAIL-OPEN {event.gate} gate",
                event.ts,
                self._tids.get(event.engine_id or ""),
                "gate",
                error=redact(event.error),
                line=line,
            )
        elif isinstance(event, GateTimedOut):
            self._instant(
                f"{event.gate} gate timed out",
                event.ts,
                self._tids.get(event.engine_id or ""),
                "gate",
                last_GiB=[None if b is None else round(b / GIB, 3) for b in event.last_bytes],
                line=line,
            )
        elif isinstance(event, PhaseChanged):
            self._phase(event)
        elif isinstance(event, RunStarted):
            self._t0 = event.ts
            self._threshold = event.threshold_bytes
            self._run_id = event.run_id
        elif isinstance(event, RunFinished):
            self._instant(
                f"run finished: {event.status}",
                event.ts,
                None,
                "run",
                reason=redact_optional(event.reason),
            )

    def _gate_decision(self, line: int, ev: GateDecision) -> None:
        tid = self._tids.get(ev.engine_id or "")
        verdict = "opened" if ev.opened else "passed" if ev.passed else "closed"
        self._instant(
            f"{ev.gate} gate {verdict}",
            ev.ts,
            tid,
            "gate",
            observed_GiB={
                short_gpu(g): None if b is None else round(b / GIB, 3)
                for g, b in zip(ev.gpus, ev.observed_bytes, strict=False)
            },
            limit_GiB=None if ev.limit_bytes is None else round(ev.limit_bytes / GIB, 3),
            settle=f"{ev.settle_count}/{ev.settle_required}",
            line=line,
        )

    def _call_ended(self, line: int, ev: AdapterCallFinished | AdapterCallFailed) -> None:
        eid = ev.engine_id
        if eid is None or eid not in self._tids:
            return
        started = self._calls.pop(eid, None)
        start = started[1] if started and started[0] == ev.call else ev.ts - ev.elapsed_s
        args: dict[str, Any] = {"line": line, "elapsed_s": ev.elapsed_s}
        name = ev.call
        if isinstance(ev, AdapterCallFailed):
            name = f"{ev.call} FAILED"
            args.update(error_type=ev.error_type, error=redact(ev.error))
        self._span(name, self._tids[eid] + 1, start, ev.ts, **args)

    def _phase(self, ev: PhaseChanged) -> None:
        key = ev.pipeline_id or "run"
        prev = self._phases.get(key)
        if prev is not None:
            self._span(prev[1], prev[0], prev[2], ev.ts)
            tid = prev[0]
        else:
            tid = PHASE_TID_BASE + len(self._phases)
        self._phases[key] = (tid, f"step {ev.step} {ev.phase}", ev.ts)

    # -- end -------------------------------------------------------------------------------

    def close(self, result: ReplayResult) -> TraceStats:
        end = result.last_ts
        for eid, (state, since, line) in self._spans.items():
            self._span(state, self._tids[eid], since, end, line=line, open=True)
        for tid, name, since in self._phases.values():
            self._span(name, tid, since, end)
        for v in result.violations:
            self._instant(
                f"VIOLATION {v.rule}",
                v.ts if v.ts is not None else end,
                self._tids.get(v.engine_id or ""),
                "violation",
                message=redact(v.message),
                line=v.line,
                gpus=[short_gpu(g) for g in v.gpus],
            )
        if self._threshold is not None:
            for gpu in self._gpu_pids:
                self._counter(gpu, "threshold GiB", end, self._threshold / GIB)
        self._metadata(ENGINES_PID, 0, "process_name", f"engines (run {self._run_id})")
        self._metadata(ENGINES_PID, 0, "process_sort_index", 0, key="sort_index")
        self._metadata(ENGINES_PID, 0, "thread_name", "run")
        for eid, tid in self._tids.items():
            self._metadata(ENGINES_PID, tid, "thread_name", self._engine_names[eid])
            self._metadata(ENGINES_PID, tid + 1, "thread_name", f"{eid} calls")
            self._metadata(ENGINES_PID, tid, "thread_sort_index", tid, key="sort_index")
            self._metadata(ENGINES_PID, tid + 1, "thread_sort_index", tid + 1, key="sort_index")
        for key, (tid, _, _) in self._phases.items():
            self._metadata(ENGINES_PID, tid, "thread_name", f"phases ({key})")
        for gpu, pid in self._gpu_pids.items():
            self._metadata(pid, 0, "process_name", f"GPU {short_gpu(gpu)}")
            self._metadata(pid, 0, "process_sort_index", pid, key="sort_index")
            self._metadata(pid, 0, "thread_name", "memory")
        other = {"source": "offload-fsm trace", "run_id": self._run_id, "log": result.path}
        self._out.write(b'\n],"displayTimeUnit":"ms","otherData":' + self._encode(other) + b"}\n")
        return TraceStats(self._count, len(self._tids), len(self._gpu_pids), len(result.violations))

    def _metadata(self, pid: int, tid: int, name: str, value: Any, key: str = "name") -> None:
        self._emit({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": {key: value}})


TRACE_SUFFIXES = (".json",)


def write_trace(
    log: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    until: int | None = None,
    force: bool = False,
) -> tuple[ReplayResult, TraceStats]:
    """Replay ``log`` and write its trace to ``out`` under the safe-output rule
    (:mod:`offload_fsm.core.safe_output`): checked before the log is read, written to a temporary
    file renamed over ``out`` only when the whole trace was written."""
    path = check_output("-o", out, suffixes=TRACE_SUFFIXES, inputs=(log,), force=force)
    with atomic_output("-o", path) as f:
        writer = TraceWriter(f)
        result = replay_path(log, until=until, observers=(writer,))
        stats = writer.close(result)
    return result, stats


__all__ = ["TRACE_SUFFIXES", "TraceStats", "TraceWriter", "write_trace"]
