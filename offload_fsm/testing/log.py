"""The recorded event log of a test world, and what the world saw outside it.

:class:`EventLog` is what the assertions read: the run's events in order (the same records a
real run writes to its JSONL log) plus the :class:`Finding` s the world made by watching
engine calls that no event shows, such as a trainer's ``onload`` called by the pipeline
itself, behind the orchestrator's back. A log read from a file (:meth:`EventLog.read`) has
events only, so the assertions also check real runs' logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from offload_fsm.core.errors import ConfigError
from offload_fsm.events import codec
from offload_fsm.events.eventlog import load_events
from offload_fsm.events.kinds import EngineRegistered, Event, RunFinished, RunStarted, Transition

E = TypeVar("E", bound=Event)

# The rules a world checks on engine calls (the replay rules check the events).
DOUBLE_RESUME = "double-resume"
GATE_SKIPPED = "gate-skipped"
WAKE_OVER_THRESHOLD = "no-wake-over-threshold"
UNMANAGED_OFFLOAD = "unmanaged-offload"

FINDING_RULES: dict[str, str] = {
    DOUBLE_RESUME: "a trainer is onloaded once per offload (a second resume crashes Megatron: "
    "'Cannot resume allocation that is not paused')",
    GATE_SKIPPED: "a trainer is onloaded only by a gated wake of the orchestrator "
    "(gated -> waking), never by a direct call",
    WAKE_OVER_THRESHOLD: "no engine enters waking while its GPUs really hold more than the "
    "wake threshold (whole-GPU used memory)",
    UNMANAGED_OFFLOAD: "a trainer is offloaded only by the orchestrator's release "
    "(active -> releasing), or its state and the log disagree",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """A broken rule the world saw as it happened (not in the event log)."""

    rule: str  # a key of FINDING_RULES
    engine_id: str
    what: str  # the call or transition that broke it, e.g. "onload call"
    after_seq: int  # seq of the last event logged before it (0: none yet)
    at_s: float  # the world's clock (virtual seconds) when it happened
    message: str

    def __str__(self) -> str:
        return (
            f"[{self.rule}] engine {self.engine_id!r}: {self.what} at t={self.at_s:g} s "
            f"(after seq {self.after_seq}): {self.message}"
        )


class RuleBroken(AssertionError):
    """Raised where a watched call breaks a rule, so the test fails at the culprit line of
    the pipeline (the finding is kept in the log too, in case the pipeline swallows it)."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding
        super().__init__(f"{finding}\n    rule: {FINDING_RULES.get(finding.rule, finding.rule)}")


class EventLog:
    """A run's events (in log order) plus the world's findings.

    Given lists, it is a view of them, not a copy: a world's ``log`` grows as the world runs
    (the ``fsm_log`` fixture is one). Any other iterable is read once, into a tuple.
    """

    def __init__(self, events: Iterable[Event], findings: Iterable[Finding] = ()) -> None:
        self.events: Sequence[Event] = events if isinstance(events, list) else tuple(events)
        self.findings: Sequence[Finding] = (
            findings if isinstance(findings, list) else tuple(findings)
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EventLog:
        """A run's JSONL event log (no findings: a file holds events only)."""
        events, report = load_events(path)
        if report.truncated is not None:
            raise ConfigError(
                "event log", str(path), f"a whole log (line {report.truncated.line} is cut short)"
            )
        return cls(events)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """The events as a JSONL log (what ``offload-fsm replay`` reads)."""
        out = Path(path)
        out.write_bytes(b"".join(codec.encode(e) + b"\n" for e in self.events))
        return out

    def __len__(self) -> int:
        return len(self.events)

    @property
    def run(self) -> RunStarted | None:
        first = self.events[0] if self.events else None
        return first if isinstance(first, RunStarted) else None

    @property
    def finished(self) -> RunFinished | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, RunFinished) else None

    @property
    def engines(self) -> dict[str, EngineRegistered]:
        """Registered engines by id, in registration order."""
        return {
            e.engine_id: e
            for e in self.events
            if isinstance(e, EngineRegistered) and e.engine_id is not None
        }

    def of(self, kind: type[E], engine: str | None = None) -> list[E]:
        """Events of one kind (of one engine, where given)."""
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (engine is None or e.engine_id == engine)
        ]

    def transitions(self, engine: str) -> list[Transition]:
        self.check_engine(engine)
        return self.of(Transition, engine)

    def states(self, engine: str) -> list[str]:
        """The engine's states in order: its initial state, then each transition's target."""
        start = self.check_engine(engine).initial_state
        return [start, *(t.dst for t in self.transitions(engine))]

    def check_engine(self, engine: str) -> EngineRegistered:
        found = self.engines.get(engine)
        if found is None:
            raise ConfigError(
                "engine", engine, f"a registered engine id, one of {sorted(self.engines)}"
            )
        return found


def describe(event: Event) -> str:
    """An event as an assertion message names it: seq, kind and what it says."""
    if isinstance(event, Transition):
        why = f", reason {event.reason!r}" if event.reason else ""
        return (
            f"seq {event.seq} transition {event.src} -> {event.dst} "
            f"(trigger {event.trigger!r}{why})"
        )
    return f"seq {event.seq} {event.kind}"


def findings_text(findings: Sequence[Finding]) -> str:
    return "\n".join(f"  {f}\n    rule: {FINDING_RULES.get(f.rule, f.rule)}" for f in findings)
