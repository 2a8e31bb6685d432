"""Timeline PNG of a run (the ``plot`` extra: matplotlib, imported only when plotting).

One lane per GPU: used memory over time with the run's threshold, and under it one strip per
engine on that GPU with its lifecycle states as coloured spans. Gate waits are the hatched
``gated`` spans, with a marker where the gate opened (or timed out); driver phases are faint
vertical lines; violations are red lines across the lanes of the GPUs involved, labelled
with their rule.

Bounded memory and time, whatever the log's length or the run's width (docs/performance.md):
the log is streamed (replay observer), and what is kept is capped per lane. A GPU's memory
series keeps at most ``POINT_BUDGET / GPUs`` points (at least ``MIN_LANE_POINTS``): when it
fills up it is halved, each pair of buckets keeping its peak. An engine's state spans are
capped the same way (``SPAN_BUDGET``): past the cap, spans are merged into time buckets that
show the state the engine spent most of the bucket in (``failed`` wins any bucket it touches).
Markers (gate openings, timeouts) and phase lines are thinned to ``MAX_MARKERS`` each, and
a strip draws at most ``MAX_SPANS_DRAWN`` spans (merged the same way).
More than ``MAX_LANES`` GPUs are drawn as an overview instead of one lane per GPU: a heat map
of used memory (GPUs x time buckets, each bucket's peak) above a heat map of engine states
(engines x time buckets, each bucket's dominant state), on a page of fixed size.
"""

from __future__ import annotations

import io
import os
from array import array
from typing import Any, BinaryIO

from offload_fsm.core.errors import MissingExtra
from offload_fsm.core.safe_output import atomic_output, check_output
from offload_fsm.replay import GIB, ReplayResult, replay_path, short_gpu
from offload_fsm.replay.timeline import TimelineCollector, merge_spans

STATE_COLORS: dict[str, str] = {
    "active": "#2ca02c",
    "releasing": "#ff7f0e",
    "slept": "#d0d0d0",
    "gated": "#ffd92f",
    "waking": "#1f77b4",
    "failed": "#d62728",
}
MAX_STEP_LABELS = 40  # more steps than this: phase lines only
MAX_POINTS = 8000  # memory points per GPU lane drawn; longer series keep each bucket's peak
MAX_SPANS_DRAWN = 3000  # per engine strip (~2 per pixel column of the page): merged past it
MAX_LANES = 24  # more GPUs: the overview (heat maps) instead of a lane per GPU
OVERVIEW_BUCKETS = 1200  # time buckets of the overview
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


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
    result: ReplayResult,
    data: TimelineCollector,
    out: str | os.PathLike[str] | BinaryIO,
    *,
    dpi: int = 110,
    fmt: str | None = None,
) -> None:
    """Draw the timeline of a replayed run to ``out`` (a path or a binary file; the format
    is ``fmt``, else the path's suffix)."""
    _mpl, Figure, FigureCanvasAgg, Patch, Line2D = _matplotlib()
    t0 = result.first_ts
    end = result.last_ts - t0
    gpus = [g.key for g in sorted(result.gpus.values(), key=lambda g: g.order)]
    if len(gpus) > MAX_LANES:
        _render_overview(result, data, out, dpi=dpi, fmt=fmt)
        return
    on_gpu = {g: [e for e in result.engines.values() if g in e.gpus] for g in gpus}
    threshold = result.run.threshold_bytes
    heights: list[float] = []
    for g in gpus:
        heights += [2.2, 0.42 * max(1, len(on_gpu[g])), 0.35]  # memory, states, spacer
    if not heights:  # nothing registered up to --until: an empty page that says so
        heights = [1.0]
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
            spans = data.spans.get(eng.engine_id, [])
            if len(spans) > MAX_SPANS_DRAWN:
                spans = merge_spans(spans, MAX_SPANS_DRAWN)
            for state, start, stop in spans:
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
    _legend_and_title(
        fig, handles, result, len(gpus), end, threshold, (1.0, 1.0 - 0.35 / fig.get_figheight())
    )
    fig.subplots_adjust(
        left=0.08, right=0.99, top=1.0 - 0.9 / fig.get_figheight(), bottom=0.5 / fig.get_figheight()
    )
    _save(fig, out, dpi, fmt)


def _legend_and_title(
    fig: Any,
    handles: list[Any],
    result: ReplayResult,
    gpu_count: int,
    end: float,
    threshold: int | None,
    at: tuple[float, float],
) -> None:
    """The legend row and the run's title line; ``at``: (legend top, title) in figure units."""
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, at[0]),
    )
    status = f"{result.violation_count} violation(s)" if result.violation_count else "no violations"
    thr = "no wake gate" if threshold is None else f"wake threshold {threshold / GIB:.1f} GiB"
    fig.suptitle(
        f"run {result.run.run_id}: {len(result.engines)} engines, {gpu_count} GPUs, "
        f"{end:.1f} s, {thr}, {status}" + (" (TRUNCATED)" if result.truncated else ""),
        y=at[1],
        fontsize=11,
    )


def _save(fig: Any, out: str | os.PathLike[str] | BinaryIO, dpi: int, fmt: str | None) -> None:
    if isinstance(out, (str, os.PathLike)):
        fig.savefig(os.fspath(out), dpi=dpi, format=fmt)
    else:
        fig.savefig(out, dpi=dpi, format=fmt)


def _render_overview(
    result: ReplayResult,
    data: TimelineCollector,
    out: str | os.PathLike[str] | BinaryIO,
    *,
    dpi: int,
    fmt: str | None,
) -> None:
    """Many GPUs: two heat maps on a fixed-size page (used memory per GPU, state per engine)."""
    import numpy as np

    _mpl, Figure, FigureCanvasAgg, Patch, Line2D = _matplotlib()
    t0 = result.first_ts
    end = max(result.last_ts - t0, 1e-6)
    gpus = [g.key for g in sorted(result.gpus.values(), key=lambda g: g.order)]
    lane = {g: i for i, g in enumerate(gpus)}
    engines = sorted(
        result.engines.values(),
        key=lambda e: (lane.get(e.gpus[0], 0) if e.gpus else 0, e.engine_id),
    )
    n = OVERVIEW_BUCKETS
    width = end / n
    mem = np.full((len(gpus), n), np.nan)
    for row, gpu in enumerate(gpus):
        series = data.memory.get(gpu)
        if series is None or not len(series.t):
            continue
        t = np.frombuffer(series.t, dtype=np.float64) - t0
        v = np.frombuffer(series.used, dtype=np.float64)
        cols = np.clip((t / width).astype(np.int64), 0, n - 1)
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, cols, v)
        # a bucket without a sample holds the last reading before it (none before: blank)
        seen = peak > -np.inf
        last = np.maximum.accumulate(np.where(seen, np.arange(n), -1))
        mem[row] = np.where(last >= 0, peak[np.maximum(last, 0)], np.nan)
    states = list(STATE_COLORS)
    code = {s: i for i, s in enumerate(states)}
    grid = np.full((max(1, len(engines)), n), np.nan)
    for row, eng in enumerate(engines):
        occ = np.zeros((len(states), n))
        for state, start, stop in data.spans.get(eng.engine_id, ()):
            k = code.get(state)
            if k is None:
                continue
            a, z = (start - t0) / width, (stop - t0) / width
            ca, cz = min(int(a), n - 1), min(int(z), n - 1)
            if ca == cz:
                occ[k, ca] += z - a
            else:
                occ[k, ca] += ca + 1 - a
                occ[k, ca + 1 : cz] += 1.0
                occ[k, cz] += z - cz
        seen = occ.sum(axis=0) > 0
        best = occ.argmax(axis=0).astype(float)
        best[occ[code["failed"]] > 0] = code["failed"]
        grid[row] = np.where(seen, best, np.nan)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, to_rgba

    fig = Figure(figsize=(15, 11), dpi=dpi)
    FigureCanvasAgg(fig)
    mem_ax, st_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    threshold = result.run.threshold_bytes
    # Both maps are coloured here, as RGBA bytes: matplotlib then only scales pixels.
    peak_gib = max((g.peak_used or 0 for g in result.gpus.values()), default=0) / GIB
    norm = Normalize(0.0, max(peak_gib, (threshold or 0) / GIB, 1.0))
    rgba = colormaps["Blues"](norm(np.nan_to_num(mem, nan=0.0)), bytes=True)
    rgba[np.isnan(mem)] = (255, 255, 255, 255)
    mem_ax.imshow(rgba, aspect="auto", interpolation="nearest", extent=(0, end, len(gpus), 0))
    fig.subplots_adjust(left=0.07, right=0.92, top=0.93, bottom=0.06, hspace=0.08)
    box = mem_ax.get_position()
    cax = fig.add_axes((0.93, box.y0, 0.012, box.height))
    bar = fig.colorbar(ScalarMappable(norm, colormaps["Blues"]), cax=cax)
    bar.set_label("used GiB (bucket peak)", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    if threshold is not None:
        bar.ax.axhline(threshold / GIB, color="#d62728", ls="--", lw=1.5)
    mem_ax.set_ylabel(f"{len(gpus)} GPUs", fontsize=9)
    palette = np.array(
        [[int(c * 255) for c in to_rgba(STATE_COLORS[s])] for s in states] + [[255] * 4],
        dtype=np.uint8,
    )
    codes = np.where(np.isnan(grid), len(states), np.nan_to_num(grid)).astype(np.int64)
    st_ax.imshow(
        palette[codes],
        aspect="auto",
        interpolation="nearest",
        extent=(0, end, max(1, len(engines)), 0),
    )
    st_ax.set_ylabel(f"{len(engines)} engines (by first GPU)", fontsize=9)
    st_ax.set_xlabel(
        f"seconds since run start ({n} buckets of {width:.3g} s: each shows its peak memory, "
        "its dominant state; failed wins)",
        fontsize=9,
    )
    for ax in (mem_ax, st_ax):
        ax.tick_params(labelsize=8)
    for violation in result.violations:
        ts = (violation.ts if violation.ts is not None else result.last_ts) - t0
        for ax in (mem_ax, st_ax):
            ax.axvline(ts, color="#d62728", lw=1.0, alpha=0.8)
    handles = [Patch(facecolor=c, label=s) for s, c in STATE_COLORS.items()]
    handles += [
        Line2D([], [], color="#d62728", ls="--", label="wake threshold (colour bar)"),
        Line2D([], [], color="#d62728", lw=1, label="violation"),
    ]
    _legend_and_title(fig, handles, result, len(gpus), end, threshold, (0.965, 0.99))
    _save(fig, out, dpi, fmt)


def plot_log(
    log: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    until: int | None = None,
    force: bool = False,
) -> ReplayResult:
    """Replay ``log`` and draw its timeline to ``out`` (PNG, SVG or PDF by suffix), under the
    safe-output rule (:mod:`offload_fsm.core.safe_output`): checked before the log is read, the
    picture drawn in memory, then written to a temporary file renamed over ``out``."""
    _matplotlib()  # fail before reading a large log when the extra is missing
    path = check_output("-o", out, suffixes=PLOT_SUFFIXES, inputs=(log,), force=force)
    data = TimelineCollector()
    result = replay_path(log, until=until, observers=(data,))
    data.close(result.last_ts)
    picture = io.BytesIO()
    render_timeline(result, data, picture, fmt=path.suffix.lower().lstrip("."))
    with atomic_output("-o", path) as f:
        f.write(picture.getbuffer())
    return result


__all__ = ["PLOT_SUFFIXES", "STATE_COLORS", "TimelineCollector", "plot_log", "render_timeline"]
