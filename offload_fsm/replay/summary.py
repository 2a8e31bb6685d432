"""What a replayed run amounts to: cycles, gate waits, residual peaks, time per state, failures.

:func:`summarize` turns a :class:`~offload_fsm.replay.ReplayResult` into plain frozen
dataclasses (``to_json`` encodes them as they are); :func:`render` prints them as tables.
A *gate wait* is the time from entering ``gated`` to entering ``waking``; waits that ended in
``slept`` (timeout, cancel) are counted apart. *Used* peaks come from memory samples over the
whole run; *residual* peaks from memory samples taken while every engine on the GPU was slept
or gated, and from the readings wake gates opened on (what offloading left behind and what the
next engine woke onto, co-tenants included).

Free text from the log (reasons, evidence, violation messages, notes) is redacted
(:mod:`offload_fsm.core.redact`): a log written before redaction existed may hold a secret.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from offload_fsm.core.lifecycle import State
from offload_fsm.core.redact import redact, redact_optional
from offload_fsm.replay import RULE_TEXT, ReplayResult, Violation, gib, short_gpu

STATE_ORDER: tuple[str, ...] = tuple(s.value for s in State)


@dataclass(frozen=True, slots=True)
class WaitStats:
    count: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    timeouts: int = 0
    cancels: int = 0


@dataclass(frozen=True, slots=True)
class EngineSummary:
    engine_id: str
    role: str
    pipeline_id: str | None
    gpus: tuple[str, ...]
    share_group: str | None
    state: str
    since_seq: int
    since_line: int
    last_trigger: str | None
    cycles: int
    releases: int
    failures: int
    fail_open_wakes: int
    gate_waits: WaitStats
    time_in_state_s: dict[str, float]


@dataclass(frozen=True, slots=True)
class GpuSummary:
    gpu: str
    samples: int
    peak_used_bytes: int | None
    peak_residual_bytes: int | None
    unmeasured: int


@dataclass(frozen=True, slots=True)
class ViolationSummary:
    rule: str
    line: int
    seq: int | None
    engine_id: str | None
    gpus: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class HistoryRow:
    line: int
    seq: int
    ts: float
    src: str
    dst: str
    trigger: str
    reason: str | None
    evidence: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    log: str
    run_id: str
    threshold_bytes: int | None
    settle_samples: int
    fail_open: bool
    events: int
    lines: int
    duration_s: float
    last_seq: int
    status: str  # run_finished's status, "truncated", or "until <seq>"
    truncated: bool
    until: int | None
    engines: tuple[EngineSummary, ...]
    gpus: tuple[GpuSummary, ...]
    gate_waits: WaitStats
    failures: dict[str, int]
    violation_count: int
    violations: tuple[ViolationSummary, ...]
    notes: tuple[str, ...]
    kinds: dict[str, int]
    history: tuple[HistoryRow, ...] | None = None  # the transitions of ``--engine``


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def wait_stats(waits: Iterable[float], timeouts: int = 0, cancels: int = 0) -> WaitStats:
    ordered = sorted(waits)
    return WaitStats(
        count=len(ordered),
        p50_s=percentile(ordered, 0.50),
        p95_s=percentile(ordered, 0.95),
        max_s=ordered[-1] if ordered else None,
        timeouts=timeouts,
        cancels=cancels,
    )


def summarize(result: ReplayResult, *, engine_id: str | None = None) -> Summary:
    """The summary; with ``engine_id`` only that engine (and its history, if recorded)."""
    engines = tuple(
        EngineSummary(
            engine_id=e.engine_id,
            role=e.role,
            pipeline_id=e.pipeline_id,
            gpus=e.gpus,
            share_group=e.share_group,
            state=e.state,
            since_seq=e.since_seq,
            since_line=e.since_line,
            last_trigger=e.last_trigger,
            cycles=e.cycles,
            releases=e.releases,
            failures=e.failures,
            fail_open_wakes=e.fail_open_wakes,
            gate_waits=wait_stats(e.gate_waits, e.gate_timeouts, e.gate_cancels),
            time_in_state_s={s: round(e.time_in[s], 6) for s in STATE_ORDER if s in e.time_in},
        )
        for e in result.engines.values()
        if engine_id in (None, e.engine_id)
    )
    history = None
    if engine_id is not None and result.history is not None:
        history = tuple(
            HistoryRow(
                line,
                t.seq,
                t.ts,
                t.src,
                t.dst,
                t.trigger,
                redact_optional(t.reason),
                redact_optional(t.evidence),
            )
            for line, t in result.history
        )
    all_waits = [w for e in result.engines.values() for w in e.gate_waits]
    run = result.run
    if result.until is not None:
        status = f"until seq {result.until}"
    elif result.truncated:
        status = "truncated"
    else:
        assert result.finished is not None
        status = result.finished.status
    return Summary(
        log=result.path,
        run_id=run.run_id,
        threshold_bytes=run.threshold_bytes,
        settle_samples=run.settle_samples,
        fail_open=run.fail_open,
        events=result.events,
        lines=result.lines,
        duration_s=round(result.last_ts - result.first_ts, 6),
        last_seq=result.last_seq,
        status=status,
        truncated=result.truncated,
        until=result.until,
        engines=engines,
        gpus=tuple(
            GpuSummary(g.key, g.samples, g.peak_used, g.peak_residual, g.unmeasured)
            for g in sorted(result.gpus.values(), key=lambda g: g.order)
        ),
        gate_waits=wait_stats(
            all_waits,
            sum(e.gate_timeouts for e in result.engines.values()),
            sum(e.gate_cancels for e in result.engines.values()),
        ),
        failures=dict(sorted(result.failures.items())),
        violation_count=result.violation_count,
        violations=tuple(_violation(v) for v in result.violations),
        notes=tuple(redact(n) for n in result.notes),
        kinds=dict(sorted(result.kinds.items())),
        history=history,
    )


def _violation(v: Violation) -> ViolationSummary:
    return ViolationSummary(v.rule.value, v.line, v.seq, v.engine_id, v.gpus, redact(v.message))


def to_json(summary: Summary) -> bytes:
    return msgspec.json.format(msgspec.json.encode(summary), indent=2)


# --- text -----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> str:
    """Left-aligned columns; numbers are pre-formatted by the caller."""
    rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = (indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(summary: Summary, *, max_violations: int = 50) -> str:
    out: list[str] = []
    threshold = "none" if summary.threshold_bytes is None else gib(summary.threshold_bytes)
    out.append(
        f"run {summary.run_id}: {summary.events} events in {summary.duration_s:.1f} s "
        f"(last seq {summary.last_seq}), {summary.status}; wake threshold {threshold}, "
        f"settle {summary.settle_samples}, fail-open {'yes' if summary.fail_open else 'no'}"
    )
    out.append("\nEngines")
    out.append(
        table(
            (
                "engine",
                "role",
                "gpus",
                "state",
                "cycles",
                "releases",
                "failed",
                "gate waits",
                "p50 s",
                "p95 s",
                "max s",
                "timeouts",
            ),
            (
                (
                    e.engine_id,
                    e.role,
                    ",".join(short_gpu(g) for g in e.gpus),
                    e.state,
                    str(e.cycles),
                    str(e.releases),
                    str(e.failures),
                    str(e.gate_waits.count),
                    _s(e.gate_waits.p50_s),
                    _s(e.gate_waits.p95_s),
                    _s(e.gate_waits.max_s),
                    str(e.gate_waits.timeouts),
                )
                for e in summary.engines
            ),
        )
    )
    w = summary.gate_waits
    out.append(
        f"  all gate waits: {w.count}, p50 {_s(w.p50_s)} s, p95 {_s(w.p95_s)} s, "
        f"max {_s(w.max_s)} s; {w.timeouts} timed out, {w.cancels} cancelled"
    )
    out.append("\nTime per state (s)")
    out.append(
        table(
            ("engine", *STATE_ORDER),
            (
                (e.engine_id, *(_s(e.time_in_state_s.get(s)) for s in STATE_ORDER))
                for e in summary.engines
            ),
        )
    )
    out.append("\nGPUs")
    out.append(
        table(
            (
                "gpu",
                "samples",
                "peak used",
                "peak residual (at rest / gate opened)",
                "unmeasured",
            ),
            (
                (
                    short_gpu(g.gpu),
                    str(g.samples),
                    gib(g.peak_used_bytes) if g.peak_used_bytes is not None else "-",
                    gib(g.peak_residual_bytes) if g.peak_residual_bytes is not None else "-",
                    str(g.unmeasured),
                )
                for g in summary.gpus
            ),
        )
    )
    out.append("\nFailures")
    out.append(
        table(("kind", "count"), ((k, str(n)) for k, n in summary.failures.items()))
        if summary.failures
        else "  none"
    )
    out.append(f"\nViolations: {summary.violation_count}")
    for v in summary.violations[:max_violations]:
        where = f"line {v.line}" + (f" seq {v.seq}" if v.seq is not None else "")
        who = f" engine {v.engine_id}" if v.engine_id else ""
        gpus = f" gpus {','.join(short_gpu(g) for g in v.gpus)}" if v.gpus else ""
        out.append(f"  {where} [{v.rule}]{who}{gpus}: {v.message}")
    hidden = summary.violation_count - min(len(summary.violations), max_violations)
    if hidden > 0:
        out.append(f"  ... and {hidden} more (--json lists the first {len(summary.violations)})")
    if summary.violation_count:
        rules = sorted({v.rule for v in summary.violations})
        out.append("  rules: " + "; ".join(f"{r}: {_rule_text(r)}" for r in rules))
    if summary.notes:
        out.append("\nNotes")
        out.extend(f"  {n}" for n in summary.notes)
    return "\n".join(out)


def _rule_text(rule: str) -> str:
    return next((text for r, text in RULE_TEXT.items() if r.value == rule), "")


def render_states(result: ReplayResult, engine_id: str | None = None) -> str:
    """Every engine's reconstructed state at the point replay stopped (``--until``)."""
    point = (
        f"seq {result.last_seq} (line {result.lines}, t+{result.last_ts - result.first_ts:.3f} s)"
    )
    engines = [e for e in result.engines.values() if engine_id in (None, e.engine_id)]
    out = [f"state at {point}"]
    out.append(
        table(
            ("engine", "state", "since seq", "since line", "last trigger", "gpus"),
            (
                (
                    e.engine_id,
                    e.state,
                    str(e.since_seq),
                    str(e.since_line),
                    e.last_trigger or "-",
                    ",".join(short_gpu(g) for g in e.gpus),
                )
                for e in engines
            ),
        )
    )
    if engine_id is not None and result.history is not None:
        out.append(f"\ntransitions of {engine_id} ({len(result.history)})")
        out.append(
            table(
                ("line", "seq", "t+s", "src", "dst", "trigger", "reason"),
                (
                    (
                        str(line),
                        str(t.seq),
                        f"{t.ts - result.first_ts:.3f}",
                        t.src,
                        t.dst,
                        t.trigger,
                        redact(t.reason or t.evidence or ""),
                    )
                    for line, t in result.history
                ),
            )
        )
    return "\n".join(out)


__all__ = [
    "EngineSummary",
    "GpuSummary",
    "HistoryRow",
    "Summary",
    "ViolationSummary",
    "WaitStats",
    "percentile",
    "render",
    "render_states",
    "summarize",
    "to_json",
    "wait_stats",
]
