"""What a timeline picture keeps of a streamed log, in bounded memory.

:class:`TimelineCollector` is a replay observer: it keeps each GPU's memory series, each
engine's state spans and the markers (gate openings and timeouts, driver phases), each capped
so that a log of any length costs the same (docs/replay.md says how): a full memory series is
halved keeping each pair's peak, an engine's spans past their share of ``SPAN_BUDGET`` are
merged into time buckets (:func:`merge_spans`), markers are thinned past ``MAX_MARKERS``.
:mod:`offload_fsm.replay.plot` draws what it kept.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from offload_fsm.events.kinds import Event, GateDecision, GateTimedOut, MemorySample, PhaseChanged
from offload_fsm.replay import GIB, EngineTrack

POINT_BUDGET = 100_000  # memory points kept over all lanes while streaming the log
MIN_LANE_POINTS = 1024
SPAN_BUDGET = 40_000  # state spans kept over all engines while streaming
MIN_ENGINE_SPANS = 256
MAX_MARKERS = 4_000  # gate openings, timeouts, phase lines each: thinned past this


@dataclass
class _Series:
    t: array[float] = field(default_factory=lambda: array("d"))
    used: array[float] = field(default_factory=lambda: array("d"))


class TimelineCollector:
    """A replay observer that keeps what the picture needs (spans, samples, markers)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.memory: dict[str, _Series] = {}
        self.spans: dict[str, list[tuple[str, float, float]]] = {}
        self.engines: dict[str, EngineTrack] = {}
        self._open: dict[str, tuple[str, float]] = {}
        self.gate_opened: list[tuple[str, float]] = []
        # (gpu, ts, observed GiB) of every wake gate decision that opened
        self.open_readings: list[tuple[str, float, float]] = []
        self.gate_timeouts: list[tuple[str, float]] = []
        self.phases: list[tuple[float, str]] = []

    def state(self, engine: EngineTrack, old: str | None, new: str, ts: float, line: int) -> None:
        eid = engine.engine_id
        self.engines[eid] = engine
        prev = self._open.get(eid)
        if prev is not None:
            spans = self.spans.get(eid)
            if spans is None:
                spans = self.spans[eid] = []
            spans.append((prev[0], prev[1], ts))
            if len(spans) > 2 * self._span_cap():
                self.spans[eid] = merge_spans(spans, self._span_cap())
        self._open[eid] = (new, ts)

    def _span_cap(self) -> int:
        return max(MIN_ENGINE_SPANS, SPAN_BUDGET // max(1, len(self.engines)))

    def _point_cap(self) -> int:
        return max(MIN_LANE_POINTS, POINT_BUDGET // max(1, len(self.memory)))

    def event(self, line: int, event: Event) -> None:
        if self.t0 is None:
            self.t0 = event.ts
        if isinstance(event, MemorySample):
            if event.used_bytes is not None:
                for gpu in event.gpus:
                    series = self.memory.get(gpu) or self.memory.setdefault(gpu, _Series())
                    series.t.append(event.ts)
                    series.used.append(event.used_bytes / GIB)
                    if len(series.t) > 2 * self._point_cap():
                        series.t, series.used = _halve(series.t, series.used)
        elif isinstance(event, GateDecision):
            if event.gate == "wake" and event.opened and event.engine_id:
                _thinned_append(self.gate_opened, (event.engine_id, event.ts))
                for gpu, nbytes in zip(event.gpus, event.observed_bytes, strict=False):
                    if nbytes is not None:
                        _thinned_append(self.open_readings, (gpu, event.ts, nbytes / GIB))
        elif isinstance(event, GateTimedOut):
            if event.gate == "wake" and event.engine_id:
                _thinned_append(self.gate_timeouts, (event.engine_id, event.ts))
        elif isinstance(event, PhaseChanged):
            _thinned_append(self.phases, (event.ts, f"{event.step}:{event.phase}"))

    def close(self, end: float) -> None:
        for eid, (state, since) in self._open.items():
            self.spans.setdefault(eid, []).append((state, since, end))
        self._open.clear()


def _thinned_append(items: list[Any], item: Any) -> None:
    """Append; past ``MAX_MARKERS`` keep every other item (a uniform thinning)."""
    items.append(item)
    if len(items) > MAX_MARKERS:
        del items[1::2]


def _halve(t: array[float], v: array[float]) -> tuple[array[float], array[float]]:
    """Half the points: each pair keeps the one with the higher reading (the peak)."""
    nt: array[float] = array("d")
    nv: array[float] = array("d")
    n = len(t) - len(t) % 2
    for i in range(0, n, 2):
        k = i if v[i] >= v[i + 1] else i + 1
        nt.append(t[k])
        nv.append(v[k])
    if n < len(t):
        nt.append(t[-1])
        nv.append(v[-1])
    return nt, nv


def merge_spans(
    spans: list[tuple[str, float, float]], buckets: int
) -> list[tuple[str, float, float]]:
    """At most ``buckets`` spans over the same time: each bucket takes the state its engine
    spent most of it in (``failed`` wins any bucket it touches); equal neighbours merge."""
    start, stop = spans[0][1], spans[-1][2]
    width = (stop - start) / buckets or 1e-9
    out: list[tuple[str, float, float]] = []
    i = 0
    for b in range(buckets):
        lo, hi = start + b * width, (start + (b + 1) * width if b < buckets - 1 else stop)
        time_in: dict[str, float] = {}
        while i < len(spans) and spans[i][2] <= lo:
            i += 1
        j = i
        while j < len(spans) and spans[j][1] < hi:
            st, a, z = spans[j]
            time_in[st] = time_in.get(st, 0.0) + max(0.0, min(z, hi) - max(a, lo))
            j += 1
        if not time_in:
            continue
        state = "failed" if "failed" in time_in else max(time_in, key=time_in.__getitem__)
        if out and out[-1][0] == state and abs(out[-1][2] - lo) < width * 1e-6:
            out[-1] = (state, out[-1][1], hi)
        else:
            out.append((state, lo, hi))
    return out
