"""The timeline plot streams the log and keeps bounded memory whatever its length, and draws
many GPUs as an overview of fixed size (offload_fsm.replay.plot; figures in docs/performance.md)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from offload_fsm.commands import cli
from offload_fsm.events.kinds import MemorySample, PhaseChanged
from offload_fsm.replay import EngineTrack, timeline

GIB = 1024**3


def _engine(eid: str, gpu: str) -> EngineTrack:
    return EngineTrack(
        engine_id=eid, role="engine", pipeline_id="p", gpus=(gpu,), share_group=None,
        initial_state="slept", registered_line=1, state="slept", since_ts=0.0, since_seq=0,
        since_line=1,
    )  # fmt: skip


def test_the_collector_keeps_bounded_memory_on_a_long_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observations far past the caps (memory samples, state changes, phases; the caps are
    made small here so that the test is quick): what the collector keeps stays under its
    caps, and the memory it holds stays flat from the middle of the stream to its end."""
    monkeypatch.setattr(timeline, "POINT_BUDGET", 1_000)
    monkeypatch.setattr(timeline, "MIN_LANE_POINTS", 64)
    monkeypatch.setattr(timeline, "SPAN_BUDGET", 400)
    monkeypatch.setattr(timeline, "MIN_ENGINE_SPANS", 16)
    monkeypatch.setattr(timeline, "MAX_MARKERS", 500)
    data = timeline.TimelineCollector()
    engines = [_engine(f"e{i}", f"GPU-{i % 4}") for i in range(8)]
    states = ["waking", "active", "releasing", "slept", "gated"]
    tracemalloc.start()
    peak_at_half = 0
    n = 30_000
    for k in range(n):
        ts = k * 0.001
        for g in range(4):
            ev = MemorySample(
                seq=k, ts=ts, run_id="r", gpus=(f"GPU-{g}",), backend="fake",
                used_bytes=(k * 7 + g) % 80 * GIB, free_bytes=None, total_bytes=None,
            )  # fmt: skip
            data.event(k, ev)
        eng = engines[k % 8]
        data.state(eng, None, states[k % 5], ts, k)
        if k % 10 == 0:
            data.event(k, PhaseChanged(seq=k, ts=ts, run_id="r", step=k, phase="rollout"))
        if k == n // 2:
            peak_at_half = tracemalloc.get_traced_memory()[1]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    data.close(n * 0.001)
    assert all(len(s.t) <= 2 * data._point_cap() for s in data.memory.values())
    assert all(len(s) <= 2 * data._span_cap() + 1 for s in data.spans.values())
    assert len(data.phases) <= timeline.MAX_MARKERS
    assert peak < peak_at_half * 1.25 + 2**20, (peak_at_half, peak)  # flat, not growing
    # the peak survives the halving: every 80 GiB-wide cycle still shows its top
    assert max(max(s.used) for s in data.memory.values()) == 79.0


def test_merged_spans_keep_time_and_let_failed_win() -> None:
    spans = [("active", 0.0, 0.9), ("failed", 0.9, 0.91), ("slept", 0.91, 10.0)]
    merged = timeline.merge_spans(spans, 10)
    assert merged[0] == ("failed", 0.0, 1.0)  # the first bucket touched failed
    assert merged[-1][0] == "slept" and merged[-1][2] == 10.0
    assert len(merged) == 2  # equal neighbours merged


def test_many_gpus_draw_an_overview_of_fixed_size(tmp_path: Path) -> None:
    """Was: one lane per GPU, a page ~1,000 inches tall for 500 GPUs (>120 s, 226 MB)."""
    from matplotlib.image import imread

    runs = tmp_path / "runs"
    argv = ["demo", "--quiet", "--steps", "1", "--gpus", "64", "--out", str(runs)]
    assert cli.main([*argv, "--run-id", "wide"]) == 0
    png = tmp_path / "wide.png"
    assert cli.main(["plot", str(runs / "wide.jsonl"), "-o", str(png)]) == 0
    assert imread(png).shape[:2] == (1210, 1650)  # 15 x 11 in at 110 dpi, whatever the width
    assert (runs / "wide.png").exists()  # the demo's own picture, drawn the same way
