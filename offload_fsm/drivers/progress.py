"""The drivers' live, readable progress view, rendered from events (never from polling)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from offload_fsm.drivers.view import RunView
from offload_fsm.events.kinds import (
    AdapterCallFailed,
    Event,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    PhaseChanged,
    RunFinished,
)

_SHORT = {
    "active": "ACT",
    "releasing": "rel",
    "slept": "zz",
    "gated": "GATE",
    "waking": "wak",
    "failed": "FAIL",
}


class ProgressPrinter:
    """Prints one line per pipeline phase (with every engine's state) and a line whenever a
    waiting wake gate's reason changes (current max residual vs threshold, blockers)."""

    def __init__(self, view: RunView, now: Callable[[], float], out: TextIO | None = None) -> None:
        self.view = view
        self.now = now
        self.out = out or sys.stdout
        self.t0 = now()
        self._last_gate: dict[str, str] = {}

    def _line(self, text: str) -> None:
        self.out.write(f"[{self.now() - self.t0:7.2f}s] {text}\n")

    def states(self) -> str:
        return " ".join(
            f"{e.engine_id}={_SHORT.get(e.state, e.state)}" for e in self.view.engines.values()
        )

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseChanged):
            label = "" if event.step < 0 else f"step {event.step}"
            self._line(f"{event.pipeline_id} {label:>7} {event.phase:<8}| {self.states()}")
        elif isinstance(event, GateDecision) and event.gate == "wake" and not event.opened:
            eid = event.engine_id or f"{event.pipeline_id} engines"
            reason = event.detail.split(";")[0] if event.passed is False else event.detail
            key = f"{event.passed}:{event.detail}"
            if self._last_gate.get(eid) != key and not event.passed:
                self._last_gate[eid] = key
                self._line(f"  {eid} gated: {reason}{_blockers(event.detail)}")
        elif isinstance(event, GateDecision) and event.opened and event.gate == "wake":
            # One line per gate that had to wait (a group gate's line names the pipeline);
            # gates that opened at once stay quiet.
            eid = event.engine_id or f"{event.pipeline_id} engines"
            if self._last_gate.pop(eid, None) is None:
                return
            detail = (
                event.detail.split(": ", 1)[-1]
                if event.detail.startswith("group")
                else (event.detail)
            )
            self._line(f"  {eid} gate open after {event.elapsed_s:.2f} s: {detail}")
        elif isinstance(event, GateFailOpen):
            self._line(f"  !!! {event.engine_id} {event.gate} gate FAIL-OPEN: {event.error}")
        elif isinstance(event, GateTimedOut):
            self._line(
                f"  !!! {event.engine_id} {event.gate} gate timed out after {event.elapsed_s:.1f} s"
            )
        elif isinstance(event, AdapterCallFailed):
            self._line(f"  !!! {event.engine_id} {event.call} failed: {event.error}")
        elif isinstance(event, RunFinished):
            self._line(f"run {event.status}" + (f": {event.reason}" if event.reason else ""))


def _blockers(detail: str) -> str:
    parts = [p.strip() for p in detail.split(";")[1:]]
    return f" [{'; '.join(parts)}]" if parts else ""
