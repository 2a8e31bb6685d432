"""Stop signals: SIGTERM, SIGHUP and SIGINT (what Slurm and Kubernetes send, what a closed
terminal sends, Ctrl-C) end a run the same way, on asyncio and on trio, in a real process:
the step in progress is cancelled, every engine is left in a documented state, the log ends
with ``run_finished`` (``cancelled``, the signal named) and replays clean, the summary is
printed, and the exit code is 128 + the signal's number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload_fsm.events.eventlog import read_events
from offload_fsm.events.kinds import RunFinished, Transition
from offload_fsm.replay import replay_path

ROOT = Path(__file__).resolve().parents[2]
# Where a cancelled operation leaves an engine (docs/reliability.md, "Cancellation").
CANCEL_REASONS = {
    "wake cancelled while gated",
    "cancelled during release: the engine's memory state is unknown",
    "cancelled during wake: the engine's memory state is unknown",
}
DEMO = ("--steps", "100000", "--quiet", "--seed", "3")


def _start(
    tmp_path: Path, argv: list[str], preexec: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *argv, "--out", str(tmp_path), "--run-id", "s"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
    )


def _wait_for_progress(proc: subprocess.Popen[bytes], log: Path, size: int = 100_000) -> None:
    deadline = time.monotonic() + 60
    while not (log.exists() and log.stat().st_size > size):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode(), err.decode()


def _default_sigint() -> None:
    # A shell's background job inherits SIGINT ignored; the test sends it as a terminal would.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _check_stopped_cleanly(log: Path, sig: int, code: int | None, out: str, err: str) -> None:
    name = signal.Signals(sig).name
    assert code == 128 + sig, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert f"stopped by {name}" in out and "cancelled" in out, out[-2000:]  # the summary
    events = list(read_events(log))
    last = events[-1]
    assert isinstance(last, RunFinished), last
    assert last.status == "cancelled" and last.reason == f"cancelled by {name}", last
    result = replay_path(log)
    assert result.ok, [str(v) for v in result.violations]
    assert not result.truncated and result.finished is not None
    # Every engine in a documented state: nothing left half-way, and any engine the
    # cancellation moved says why in the words of the Cancellation table.
    assert {t.state for t in result.engines.values()} <= {"active", "slept", "failed"}
    # The demo fails no engine by itself: a fail or cancel_wake is the signal's doing.
    moved = [
        e for e in events if isinstance(e, Transition) and e.trigger in ("fail", "cancel_wake")
    ]
    assert all(e.reason in CANCEL_REASONS for e in moved), [e.reason for e in moved]
    assert len({e.engine_id for e in moved}) == len(moved)  # each engine moved once, at the end


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_a_stop_signal_ends_the_demo_like_ctrl_c(tmp_path: Path, backend: str, sig: int) -> None:
    log = tmp_path / "s.jsonl"
    if backend == "asyncio":  # the installed command itself
        argv = ["-m", "offload_fsm", "demo", *DEMO]
    else:  # the same command's code, run by anyio on trio
        argv = ["-m", "tests.reliability.stop_child", backend, *DEMO]
    proc = _start(tmp_path, argv, _default_sigint)
    _wait_for_progress(proc, log)
    out, err = _stop(proc, sig)
    _check_stopped_cleanly(log, sig, proc.returncode, out, err)


def test_sigterm_ends_a_driver_script_the_same_way(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    proc = _start(tmp_path, ["drivers/run_miles_dual.py", *DEMO])
    _wait_for_progress(proc, log)
    out, err = _stop(proc, signal.SIGTERM)
    _check_stopped_cleanly(log, signal.SIGTERM, proc.returncode, out, err)


def test_a_run_started_under_nohup_keeps_ignoring_sighup(tmp_path: Path) -> None:
    """``nohup`` ignores SIGHUP so a closed terminal does not stop the job: the run keeps
    going through a SIGHUP, and a SIGTERM still ends it cleanly."""
    log = tmp_path / "s.jsonl"

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = _start(tmp_path, ["-m", "offload_fsm", "demo", *DEMO], nohup)
    _wait_for_progress(proc, log)
    proc.send_signal(signal.SIGHUP)
    size = log.stat().st_size
    _wait_for_progress(proc, log, size + 100_000)  # still running, still writing
    out, err = _stop(proc, signal.SIGTERM)
    _check_stopped_cleanly(log, signal.SIGTERM, proc.returncode, out, err)
