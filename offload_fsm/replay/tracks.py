"""What replay reconstructs: a track per engine and per GPU, the observer protocol (trace, plot
and metrics implement it), and the result of a replay."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from offload_fsm.events.eventlog import TruncatedLine
from offload_fsm.events.kinds import Event, GateDecision, RunFinished, RunStarted, Transition
from offload_fsm.replay.rules import Violation


@dataclass(eq=False, slots=True)
class EngineTrack:
    """Everything replay knows about one engine; small and fixed in size."""

    engine_id: str
    role: str
    pipeline_id: str | None
    gpus: tuple[str, ...]
    share_group: str | None
    initial_state: str
    registered_line: int
    state: str
    since_ts: float
    since_seq: int
    since_line: int
    last_trigger: str | None = None
    time_in: dict[str, float] = field(default_factory=dict)
    cycles: int = 0  # completed wakes (waking -> active)
    releases: int = 0
    failures: int = 0
    fail_open_wakes: int = 0
    gate_timeouts: int = 0
    gate_cancels: int = 0
    gate_waits: array[float] = field(default_factory=lambda: array("d"))  # gated -> waking, s
    # rule 2 bookkeeping, reset each time the engine enters gated
    gated_ts: float | None = None
    gated_line: int | None = None
    wake_pass_line: int | None = None
    wake_bad: str | None = None  # why the last opened decision did not count
    last_wake_decision: tuple[int, GateDecision] | None = None
    fail_open_line: int | None = None


@dataclass(eq=False, slots=True)
class GpuTrack:
    key: str
    order: int
    samples: int = 0
    peak_used: int | None = None
    peak_used_ts: float | None = None
    # highest whole-GPU used while no engine on the GPU held memory (all slept or gated), or
    # that a wake gate opened on
    peak_residual: int | None = None
    peak_residual_ts: float | None = None
    holders: int = 0  # engines on this GPU that are active, waking, releasing or failed
    unmeasured: int = 0  # memory samples with unknown used bytes


class Observer(Protocol):
    """Gets every replayed event and every state change (trace and plot are observers)."""

    def event(self, line: int, event: Event) -> None: ...

    def state(
        self, engine: EngineTrack, old: str | None, new: str, ts: float, line: int
    ) -> None: ...


@dataclass(eq=False)
class ReplayResult:
    path: str
    run: RunStarted
    engines: dict[str, EngineTrack]
    gpus: dict[str, GpuTrack]
    violations: list[Violation]
    violation_count: int
    notes: list[str]
    events: int
    lines: int
    kinds: Counter[str]
    failures: Counter[str]  # by kind: "transition:failed", "adapter_call_failed:<type>", ...
    first_ts: float
    last_ts: float
    last_seq: int
    finished: RunFinished | None
    truncated_line: TruncatedLine | None
    until: int | None
    history: list[tuple[int, Transition]] | None  # (line, transition) of --engine, if asked

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def truncated(self) -> bool:
        """The log stops before ``run_finished`` (and replay was not asked to stop early)."""
        return self.until is None and (self.finished is None or self.truncated_line is not None)
