"""The benchmarks that back docs/performance.md still run, at toy sizes, and print what the
page reads from them (the figures themselves are measured by running them, not here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from offload_fsm.timing.idle import run as run_virtual
from tests.bench import (
    bench_core,
    bench_overhead,
    bench_plot,
    bench_scale,
    bench_shared_rounds,
    compare_scale,
    count_instructions,
)


def test_shared_rounds_bench_shows_one_round_for_gates_polling_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_virtual(bench_shared_rounds.main, ["--moments", "5"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^NVML backend over the fake module\s+(\d+)\s+(.*)$", out, re.M)
    assert [int(g) for g, _ in rows] == list(bench_shared_rounds.GATES)
    for gates, cells in rows:
        each, shared = re.findall(r"([\d.]+) rd", cells)
        assert float(each) == float(gates)  # a round per gate
        assert float(shared) == 1.0  # one round for all of them, through the worker thread


def test_scale_bench_prints_the_cycle_and_its_baselines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_NODES", "1")
    monkeypatch.setenv("BENCH_STEPS", "1")
    monkeypatch.setenv("BENCH_EXTRA", "1")
    monkeypatch.setenv("BENCH_REPEAT", "2")
    run_virtual(bench_scale.main)
    out = capsys.readouterr().out
    assert "fastest of 2 runs each" in out
    assert re.search(r"max RSS so far [\d.]+ MiB\)$", out, re.M)
    names = [v.name for v in (bench_scale.SHIPPED, *bench_scale.BASELINES)]
    for name in names:
        assert re.search(
            rf"^\s+1\s+8\s+14\s.*{re.escape(name)} \(ref loop [\d.]+ ms\)$", out, re.M
        ), name
    rounds = {
        name: int(
            re.search(rf"^\s+1\s+8\s+14(?:\s+\S+){{5}}\s+(\d+)\s.*{re.escape(name)} \(", out, re.M)[
                1
            ]
        )  # type: ignore[index]
        for name in names
    }
    # The fake ledger's rounds are cheap: shipped, each gate polls alone; shared, fewer rounds.
    assert rounds["probe rounds shared all the same"] < rounds["as shipped"]


def test_scale_bench_refuses_a_repeat_below_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_REPEAT", "0")
    with pytest.raises(SystemExit, match="BENCH_REPEAT must be >= 1, got 0"):
        run_virtual(bench_scale.main)


def test_core_bench_prints_lifecycle_memory_and_event_costs_beside_baselines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench_core.bench_costs(200, 1)
    out = capsys.readouterr().out
    shared = float(re.search(r"memory per Lifecycle \(one shared machine\)\s+([\d.]+) KiB", out)[1])  # type: ignore[index]
    own = float(re.search(r"memory per engine with a Machine of its own\s+([\d.]+) KiB", out)[1])  # type: ignore[index]
    assert shared * 10 < own  # the shared machine is what keeps an engine small
    for kind in ("Transition", "GateDecision"):
        assert re.search(rf"build a {kind} \(frozen, as shipped\), mean\s+[\d.]+ µs", out)
    assert len(re.findall(r"build the same fields, not frozen, mean\s+[\d.]+ µs", out)) == 2


def test_count_instructions_counts_more_calls_for_more_steps_and_names_a_missing_valgrind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = count_instructions.calls(1, 1, "auto")
    assert count_instructions.calls(1, 2, "auto") > short > 0
    monkeypatch.setattr(count_instructions.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="valgrind is not installed"):
        count_instructions.instructions(1, 1, "auto")
    with pytest.raises(SystemExit):
        count_instructions.main(["--nodes", "0"])


def test_compare_scale_prints_a_ratio_per_pair_and_refuses_a_tree_that_is_not_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # This checkout against itself, at toy size: one row per pair, each with its ratio.
    assert compare_scale.main([str(compare_scale.HERE), "--nodes", "1", "--pairs", "2"]) == 0
    row = r"^\s+(\d)\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)$"
    rows = re.findall(row, capsys.readouterr().out, re.M)
    assert [r[0] for r in rows] == ["1", "2"]
    for _, before, now, ratio in rows:
        assert float(ratio) == pytest.approx(float(now) / float(before), abs=0.02)
    with pytest.raises(SystemExit):
        compare_scale.main([str(tmp_path)])
    assert "not a checkout of this project" in capsys.readouterr().err


def test_overhead_bench_prints_a_share_of_the_physical_cost_per_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_overhead.main(["--engines", "1,4", "--cycles", "1"]) == 0
    out = capsys.readouterr().out
    assert "22-35 ms" in out  # the physical release + resume it is measured against
    rows = re.findall(
        r"^\s+(\d+)\s+([\d.]+) ms\s+([\d.]+) µs\s+([\d.]+) %\s+([\d.]+) %$", out, re.M
    )
    assert [r[0] for r in rows] == ["1", "4"]
    for _, cycle_ms, engine_us, share, whole in rows:
        assert float(cycle_ms) > 0 and float(engine_us) > 0
        assert float(share) == pytest.approx(float(engine_us) / 1e3 / 22 * 100, abs=0.02)
        assert float(whole) == pytest.approx(float(cycle_ms) / 22 * 100, abs=0.1)
    with pytest.raises(SystemExit):
        bench_overhead.main(["--engines", "0"])


def test_compare_scale_prints_the_overhead_of_both_trees_side_by_side(
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = str(compare_scale.HERE)
    assert compare_scale.main([here, "--overhead", "--engines", "2", "--pairs", "1"]) == 0
    out = capsys.readouterr().out
    row = re.search(
        r"^\s+2\s+([\d.]+) µs\s+([\d.]+)%\s+([\d.]+) µs\s+([\d.]+)%\s+([\d.]+)$", out, re.M
    )
    assert row is not None, out
    other, this = float(row[1]), float(row[3])
    assert float(row[5]) == pytest.approx(this / other, abs=0.01)
    with pytest.raises(SystemExit):
        compare_scale.main([here, "--overhead", "--engines", "0"])


def test_plot_bench_prints_run_and_plot_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert bench_plot.main(["--gpus", "4", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "a plot process's floor" in out
    assert re.search(
        r"^\s+4\s+1\s+\d+\s+[\d.]+ s\s+\d+ MiB\s+[\d.]+ s\s+\d+ MiB\s+[\d.]+$", out, re.M
    ), out


def test_plot_bench_plots_a_generated_log(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert bench_plot.main(["--gpus", "", "--events", "3000", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^\s+4\s+gen\s+([\d,]+)\s", out, re.M)
    assert row is not None, out
    assert int(row[1].replace(",", "")) > 1000  # the generated log's events, counted
