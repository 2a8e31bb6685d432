"""Numeric input goes through one validator (offload_fsm.core.limits): finite, in range, the same
limits in ``demo``, ``gate`` and ``replay``, documented upper bounds where a larger value
cannot be served. Every refusal is one line, exit 2, and nothing is written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offload_fsm.commands import cli
from offload_fsm.core.limits import MAX_SIM_GPUS, MIN_THRESHOLD_BYTES
from offload_fsm.drivers.topology import DUAL_ENV
from offload_fsm.events import eventlog
from offload_fsm.events.kinds import RunFinished, RunStarted
from offload_fsm.settings import THRESHOLD_ENV


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (THRESHOLD_ENV, *DUAL_ENV):
        monkeypatch.delenv(key, raising=False)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI: exit 2 with one line naming the input, no traceback; that line."""
    t0 = time.monotonic()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert time.monotonic() - t0 < 30, argv  # refused, not served
    return err


def demo(tmp_path: Path, *args: str) -> list[str]:
    return ["demo", "--quiet", "--steps", "1", "--out", str(tmp_path / "runs"), *args]


def log_with_threshold(path: Path, threshold: int | None) -> Path:
    run = RunStarted(
        seq=1, ts=1.0, run_id="r", tool_version="0", threshold_bytes=threshold,
        settle_samples=1, fail_open=False, backend="fake",
    )  # fmt: skip
    with eventlog.EventLogWriter(path) as w:
        w.write(run)
        w.write(RunFinished(seq=2, ts=2.0, run_id="r", status="ok"))
    return path


@pytest.mark.parametrize("value", ["1e-300", "1e-9", "0.0009"])
def test_one_threshold_validator_for_demo_gate_and_replay(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    """Was: ``demo --threshold 1e-300`` exited 2 but left an empty log; ``gate`` accepted it;
    a log's ``threshold_bytes: -5`` replayed as 36 violations."""
    said = refused(capsys, *demo(tmp_path, "--threshold", value))
    assert f"--threshold={value!r}" in said and "at least 1 MiB" in said
    assert not (tmp_path / "runs").exists()  # nothing written, not even an empty log
    gate = refused(capsys, "gate", "--gpus", "0", "--backend", "fake", "--threshold", value)
    assert gate.split(" is invalid: ")[1] == said.split(" is invalid: ")[1]  # the same rule
    monkeypatch.setenv(THRESHOLD_ENV, value)
    assert "at least 1 MiB" in refused(capsys, *demo(tmp_path))
    assert "at least 1 MiB" in refused(capsys, "gate", "--gpus", "0", "--backend", "fake")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("threshold", [-5, 0, 1, MIN_THRESHOLD_BYTES - 1, 2**70])
def test_replay_refuses_a_log_with_an_impossible_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threshold: int
) -> None:
    log = log_with_threshold(tmp_path / "run.jsonl", threshold)
    err = refused(capsys, "replay", str(log))
    assert str(log) in err and "line 1" in err and "threshold_bytes" in err, err
    for command in (["trace", str(log), "-o", str(tmp_path / "t.json")],):
        assert "threshold_bytes" in refused(capsys, *command)
    assert not (tmp_path / "t.json").exists()


def test_replay_accepts_the_smallest_threshold_and_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for threshold in (MIN_THRESHOLD_BYTES, None):
        log = log_with_threshold(tmp_path / f"run-{threshold}.jsonl", threshold)
        assert cli.main(["replay", str(log)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "--backend", "fake", "--watch", "inf"],  # was: hung forever
        ["probe", "--backend", "fake", "--watch", "nan"],
        ["probe", "--backend", "fake", "--watch", "1e9"],
        ["probe", "--backend", "fake", "--watch", "0"],
        ["probe", "--backend", "fake", "--watch", "1", "--count", "0"],
        ["probe", "--backend", "fake", "--watch", "1", "--count", "x"],
        ["gate", "--gpus", "0", "--backend", "fake", "--timeout", "inf"],
        ["gate", "--gpus", "0", "--backend", "fake", "--timeout", "1e9"],
        ["gate", "--gpus", "0", "--backend", "fake", "--settle", "100000"],
    ],
)
def test_documented_upper_bounds(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    err = refused(capsys, *argv)
    assert "<=" in err or ">" in err, err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--gpus", "100000"),  # was: a minute registering 42,815 engines
        ("--gpus", str(MAX_SIM_GPUS + 2)),
        ("--steps", "10000000"),
        ("--gate-timeout", "1e9"),
        ("--rollout", "1e300"),
        ("--settle", "100000"),
        ("--seed", str(2**64)),
        ("--gpu-gib", "1e30"),
    ],
)
def test_demo_upper_bounds_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    err = refused(capsys, *demo(tmp_path, flag, value))
    assert flag in err and "<=" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "inf"])
def test_until_is_one_rule_for_replay_trace_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """Was: ``plot --until -1`` and ``--until 0`` were tracebacks."""
    log = log_with_threshold(tmp_path / "run.jsonl", 8 * 1024**3)
    outputs = {"trace": tmp_path / "t.json", "plot": tmp_path / "p.png"}
    for command in ("replay", "trace", "plot"):
        out = ["-o", str(outputs[command])] if command in outputs else []
        err = refused(capsys, command, str(log), *out, "--until", value)
        assert f"--until={value!r}" in err and "sequence number" in err, err
    assert not any(p.exists() for p in outputs.values())


def test_until_zero_draws_an_empty_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    log = tmp_path / "runs" / "r.jsonl"
    assert (
        cli.main(["demo", "--quiet", "--steps", "1", "--out", str(log.parent), "--run-id", "r"])
        == 0
    )
    for until in ("0", "1", "3"):
        png = tmp_path / f"u{until}.png"
        assert cli.main(["plot", str(log), "-o", str(png), "--until", until]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [
        ["trace", "run.jsonl"],  # -o missing
        ["plot"],  # the log missing
        ["nosuch"],
        ["demo", "--engines", "gpu"],
        ["replay", "run.jsonl", "--no-such-flag"],
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """argparse's own errors (a missing argument, an unknown command or choice) are one line
    too, naming the command and where its help is; was: the usage block and the error."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err and "--help" in err, err
