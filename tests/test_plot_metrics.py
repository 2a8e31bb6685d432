"""The optional outputs: timeline PNG (plot extra) and Prometheus metrics (metrics extra).

Both extras are in the ``test`` extra, so these run in CI; the tests of the missing-extra
errors hide the package from the import system instead of uninstalling it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from offload_fsm.commands.cli import main
from offload_fsm.core.errors import MissingExtra
from offload_fsm.events.kinds import GateDecision, Transition
from offload_fsm.replay import replay_path
from offload_fsm.testing.log_builder import incident_log, write_events
from offload_fsm.testing.synthetic import SimConfig, simulate


def _red_pixels(png: Path) -> int:
    import numpy as np
    from matplotlib.image import imread

    img = imread(png)[:, :, :3]
    red = np.array([0xD6, 0x27, 0x28]) / 255.0  # the violation colour
    return int((np.abs(img - red).max(axis=2) < 0.06).sum())


def test_plot_of_a_dual_run_and_of_the_incident(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    events, _ = simulate(SimConfig(steps=5, seed=3, co_tenant_p=0.6))
    log = write_events(tmp_path / "dual.jsonl", events)
    png = tmp_path / "dual.png"
    assert main(["plot", str(log), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width = imread(png).shape[:2]
    assert width >= 1500 and height >= 1000  # 4 GPU lanes with their engine strips

    bad = incident_log(with_gate_decision=True).write(tmp_path / "incident.jsonl")
    # The same log without its violation: the trainer stays asleep.
    good_events = [
        e
        for e in incident_log(with_gate_decision=True).events
        if not (isinstance(e, (Transition, GateDecision)) and e.engine_id == "p1-train")
    ]
    good = write_events(tmp_path / "good.jsonl", good_events)
    assert main(["plot", str(bad), "-o", str(tmp_path / "bad.png")]) == 1
    assert main(["plot", str(good), "-o", str(tmp_path / "good.png")]) == 0
    # the violation is drawn as a red line across the lane (the threshold is dashed red too)
    assert _red_pixels(tmp_path / "bad.png") > _red_pixels(tmp_path / "good.png") + 300


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    log = incident_log(with_gate_decision=False).write(tmp_path / "i.jsonl")
    assert main(["plot", str(log), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "offload-fsm[plot]" in err
    assert not (tmp_path / "x.png").exists()


def test_metrics_from_a_replayed_run(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from offload_fsm.replay.metrics import EventMetrics

    events, _ = simulate(SimConfig(steps=4, seed=5, co_tenant_p=0.5, release_fail_p=0.3))
    log = write_events(tmp_path / "run.jsonl", events)
    metrics = EventMetrics()
    result = replay_path(log, observers=(metrics,))
    reg = metrics.registry
    waits = {e: len(t.gate_waits) for e, t in result.engines.items()}
    for eid, n in waits.items():
        assert reg.get_sample_value("offload_fsm_gate_wait_seconds_count", {"engine": eid}) == n
    moves = sum(isinstance(e, Transition) for e in events)
    total = sum(
        s.value
        for m in reg.collect()
        if m.name == "offload_fsm_transitions"
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert total == moves
    failed = sum(t.failures for t in result.engines.values())
    assert (
        reg.get_sample_value("offload_fsm_failures_total", {"kind": "engine_failed"}) or 0
    ) == failed
    out = tmp_path / "m.prom"
    assert main(["replay", str(log), "--metrics-out", str(out)]) == 0
    text = out.read_text()
    assert "offload_fsm_gpu_residual_bytes{gpu=" in text
    assert "offload_fsm_gate_wait_seconds_bucket" in text


def test_metrics_without_prometheus_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    from offload_fsm.replay.metrics import EventMetrics

    with pytest.raises(MissingExtra, match=r"offload-fsm\[metrics\]"):
        EventMetrics()
