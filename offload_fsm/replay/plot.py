"""Timeline PNG of a run (the ``plot`` extra: matplotlib, imported only when plotting).

One lane per GPU: used memory over time with the run's threshold, and under it one strip per
engine on that GPU with its lifecycle states as coloured spans. Gate waits are the hatched
``gated`` spans, with a marker where the gate opened (or timed out); driver phases are faint
vertical lines; violations are red lines across the lanes of the GPUs involved, labelled
with their rule.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from typing import Any

from offload_fsm.core.errors import MissingExtra
from offload_fsm.events.kinds import Event, GateDecision, GateTimedOut, MemorySample, PhaseChanged
from offload_fsm.replay import GIB, EngineTrack, ReplayResult, replay_path, short_gpu

STATE_COLORS: dict[str, str] = {
    "active": "#2ca02c",
    "releasing": "#ff7f0e",
    "slept": "#d0d0d0",
    "gated": "#ffd92f",
    "waking": "#1f77b4",
    "failed": "#d62728",
}
MAX_STEP_LABELS = 40  # more steps than this: phase lines only
MAX_POINTS = 8000  # memory points per GPU lane; longer series keep each bucket's peak


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
            self.spans.setdefault(eid, []).append((prev[0], prev[1], ts))
        self._open[eid] = (new, ts)

    def event(self, line: int, event: Event) -> None:
        if self.t0 is None:
            self.t0 = event.ts
        if isinstance(event, MemorySample):
            if event.used_bytes is not None:
                for gpu in event.gpus:
                    series = self.memory.get(gpu) or self.memory.setdefault(gpu, _Series())
                    series.t.append(event.ts)
                    series.used.append(event.used_bytes / GIB)
        elif isinstance(event, GateDecision):
            if event.gate == "wake" and event.opened and event.engine_id:
                self.gate_opened.append((event.engine_id, event.ts))
                for gpu, nbytes in zip(event.gpus, event.observed_bytes, strict=False):
                    if nbytes is not None:
                        self.open_readings.append((gpu, event.ts, nbytes / GIB))
        elif isinstance(event, GateTimedOut):
            if event.gate == "wake" and event.engine_id:
                self.gate_timeouts.append((event.engine_id, event.ts))
        elif isinstance(event, PhaseChanged):
            self.phases.append((event.ts, f"{event.step}:{event.phase}"))

    def close(self, end: float) -> None:
        for eid, (state, since) in self._open.items():
            self.spans.setdefault(eid, []).append((state, since, end))
        self._open.clear()


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise MissingExtra("offload-fsm plot", "matplotlib", "plot") from exc
    return matplotlib, Figure, FigureCanvasAgg, Patch, Line2D


def _decimate(t: array[float], v: array[float]) -> tuple[list[float], list[float]]:
    if len(t) <= MAX_POINTS:
        return list(t), list(v)
    step = len(t) / (MAX_POINTS // 2)
    ts: list[float] = []
    vs: list[float] = []
    i = 0.0
    while int(i) < len(t):
        lo, hi = int(i), min(len(t), int(i + step))
        chunk = v[lo:hi]
        k = max(range(len(chunk)), key=chunk.__getitem__)
        ts.append(t[lo + k])
        vs.append(chunk[k])
        i += step
    return ts, vs


def render_timeline(
    result: ReplayResult, data: TimelineCollector, out: str | os.PathLike[str], *, dpi: int = 110
) -> None:
    """Draw the timeline of a replayed run to a PNG at ``out``."""
    _mpl, Figure, FigureCanvasAgg, Patch, Line2D = _matplotlib()
    t0 = result.first_ts
    end = result.last_ts - t0
    gpus = [g.key for g in sorted(result.gpus.values(), key=lambda g: g.order)]
    on_gpu = {g: [e for e in result.engines.values() if g in e.gpus] for g in gpus}
    threshold = result.run.threshold_bytes
    heights: list[float] = []
    for g in gpus:
        heights += [2.2, 0.42 * max(1, len(on_gpu[g])), 0.35]  # memory, states, spacer
    fig = Figure(figsize=(15, sum(heights) * 0.75 + 1.6), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.0)
    peak = max((g.peak_used or 0 for g in result.gpus.values()), default=0) / GIB
    ymax = max(peak, (threshold or 0) / GIB, 1.0) * 1.12
    first_ax: Any = None
    violations_by_gpu: dict[str, list[tuple[float, str]]] = {g: [] for g in gpus}
    for v in result.violations:
        for g in v.gpus or tuple(gpus):
            if g in violations_by_gpu:
                violations_by_gpu[g].append(
                    ((v.ts if v.ts is not None else result.last_ts) - t0, v.rule.value)
                )
    for i, gpu in enumerate(gpus):
        mem_ax = fig.add_subplot(grid[3 * i], sharex=first_ax)
        first_ax = first_ax or mem_ax
        st_ax = fig.add_subplot(grid[3 * i + 1], sharex=first_ax)
        fig.add_subplot(grid[3 * i + 2]).set_axis_off()
        series = data.memory.get(gpu)
        if series is not None and len(series.t):
            ts, used = _decimate(series.t, series.used)
            ts.append(result.last_ts)  # hold the last reading to the end of the run
            used.append(used[-1])
            mem_ax.step([t - t0 for t in ts], used, where="post", color="#333333", lw=1.1)
            mem_ax.fill_between([t - t0 for t in ts], used, step="post", color="#9ecae1", alpha=0.5)
        if threshold is not None:
            mem_ax.axhline(threshold / GIB, color="#d62728", ls="--", lw=1.0)
        mem_ax.set_ylim(0, ymax)
        mem_ax.set_ylabel("used GiB", fontsize=8)
        mem_ax.tick_params(labelbottom=False, labelsize=8)
        mem_ax.grid(axis="y", color="#eeeeee", lw=0.6)
        mem_ax.text(
            0.003,
            0.93,
            short_gpu(gpu),
            transform=mem_ax.transAxes,
            fontsize=10,
            fontweight="bold",
            va="top",
            ha="left",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        )
        readings = [(t - t0, b) for g, t, b in data.open_readings if g == gpu]
        mem_ax.plot(
            [t for t, _ in readings],
            [b for _, b in readings],
            "^",
            color="black",
            ms=5,
            ls="none",
            zorder=5,
        )
        if data.phases:  # one collection, not a line per phase: long runs have thousands
            mem_ax.vlines(
                [t - t0 for t, _ in data.phases],
                0,
                1,
                color="#999999",
                lw=0.6,
                alpha=0.6,
                zorder=0,
                transform=mem_ax.get_xaxis_transform(),
            )
        steps = [(t, label) for t, label in data.phases if label.endswith("rollout")]
        if i == 0 and len(steps) <= MAX_STEP_LABELS:
            for ts_, label in steps:
                mem_ax.text(
                    ts_ - t0,
                    ymax * 1.01,
                    f"step {label.split(':')[0]}",
                    fontsize=8,
                    color="#555555",
                    va="bottom",
                    ha="left",
                )
        engines = on_gpu[gpu]
        for row, eng in enumerate(engines):
            y = len(engines) - 1 - row
            by_state: dict[str, list[tuple[float, float]]] = {}
            for state, start, stop in data.spans.get(eng.engine_id, ()):
                by_state.setdefault(state, []).append((start - t0, max(stop - start, 1e-9)))
            for state, ranges in by_state.items():  # one collection per state: fast to draw
                st_ax.broken_barh(
                    ranges,
                    (y + 0.12, 0.76),
                    facecolors=STATE_COLORS.get(state, "#ffffff"),
                    edgecolor="#7a6200" if state == "gated" else "none",
                    hatch="///" if state == "gated" else None,
                    lw=0.4,
                )
            opened = [t - t0 for e, t in data.gate_opened if e == eng.engine_id]
            st_ax.plot(opened, [y + 0.5] * len(opened), "^", color="black", ms=4, ls="none")
            timed = [t - t0 for e, t in data.gate_timeouts if e == eng.engine_id]
            st_ax.plot(timed, [y + 0.5] * len(timed), "x", color="#d62728", ms=6, ls="none")
        st_ax.set_ylim(0, max(1, len(engines)))
        st_ax.set_yticks([len(engines) - 1 - r + 0.5 for r in range(len(engines))])
        st_ax.set_yticklabels([e.engine_id for e in engines], fontsize=8)
        st_ax.tick_params(axis="y", length=0)
        last = i == len(gpus) - 1
        st_ax.tick_params(axis="x", labelbottom=last, labelsize=8)
        for spine in ("top", "right"):
            st_ax.spines[spine].set_visible(False)
        for ts_, rule in violations_by_gpu[gpu]:
            for ax in (mem_ax, st_ax):
                ax.axvline(ts_, color="#d62728", lw=2.0)
            mem_ax.text(
                ts_,
                ymax * 0.97,
                f" {rule}",
                color="#d62728",
                fontsize=8,
                fontweight="bold",
                va="top",
            )
    if first_ax is not None:
        first_ax.set_xlim(0, max(end, 1e-6))
        fig.axes[-2].set_xlabel("seconds since run start", fontsize=9)
    handles = [
        Patch(
            facecolor=c,
            label=s,
            hatch="///" if s == "gated" else None,
            edgecolor="#7a6200" if s == "gated" else "none",
        )
        for s, c in STATE_COLORS.items()
    ]
    handles += [
        Line2D([], [], color="#d62728", ls="--", label="wake threshold"),
        Line2D([], [], marker="^", color="black", ls="none", label="gate opened (at its reading)"),
        Line2D([], [], marker="x", color="#d62728", ls="none", label="gate timed out"),
        Line2D([], [], color="#d62728", lw=2, label="violation"),
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    status = f"{result.violation_count} violation(s)" if result.violation_count else "no violations"
    thr = "no wake gate" if threshold is None else f"wake threshold {threshold / GIB:.1f} GiB"
    fig.suptitle(
        f"run {result.run.run_id}: {len(result.engines)} engines, {len(gpus)} GPUs, "
        f"{end:.1f} s, {thr}, {status}" + (" (TRUNCATED)" if result.truncated else ""),
        y=1.0 - 0.35 / fig.get_figheight(),
        fontsize=11,
    )
    fig.subplots_adjust(
        left=0.08, right=0.99, top=1.0 - 0.9 / fig.get_figheight(), bottom=0.5 / fig.get_figheight()
    )
    fig.savefig(os.fspath(out), dpi=dpi)


def plot_log(
    log: str | os.PathLike[str], out: str | os.PathLike[str], *, until: int | None = None
) -> ReplayResult:
    """Replay ``log`` and draw its timeline to ``out`` (PNG, SVG or PDF by suffix)."""
    _matplotlib()  # fail before reading a large log when the extra is missing
    data = TimelineCollector()
    result = replay_path(log, until=until, observers=(data,))
    data.close(result.last_ts)
    render_timeline(result, data, out)
    return result


__all__ = ["STATE_COLORS", "TimelineCollector", "plot_log", "render_timeline"]
