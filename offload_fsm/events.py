"""Event kinds: frozen dataclasses, one per kind, with flat fields.

Every event carries the envelope (schema version ``v``, per-run ``seq``, ``ts`` from the
injected clock, ``run_id``, ``pipeline_id``, ``engine_id``, ``gpus``); each kind adds its own
fields. Bytes are ``int`` and ``None`` means *unknown* (never 0). ``kind`` is a class
attribute and is written first in each JSON line (see :mod:`offload_fsm.codec`).

docs/events.md documents every kind and field; a test keeps it in step with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    v: int = SCHEMA_VERSION
    seq: int
    ts: float
    run_id: str
    pipeline_id: str | None = None
    engine_id: str | None = None
    gpus: tuple[str, ...] = ()


# --- run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """First event of a run: what the run was configured with (replay reads its topology)."""

    kind: ClassVar[str] = "run_started"
    tool_version: str
    threshold_bytes: int | None  # the residual gate threshold in force (None: no wake gate)
    settle_samples: int
    fail_open: bool
    backend: str
    command: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRegistered(Event):
    """An engine (or trainer) joined the run: its GPUs and process root."""

    kind: ClassVar[str] = "engine_registered"
    role: str  # "engine" | "trainer"
    adapter: str  # "sim" | "sglang" | "vllm" | "trainer" | ...
    initial_state: str
    process_root: int | None = None
    # Engines with the same non-empty group may be awake together on a shared GPU.
    share_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str  # "ok" | "failed" | "cancelled"
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseChanged(Event):
    """A driver's progress marker (rollout, shrink, train, expand ...)."""

    kind: ClassVar[str] = "phase_changed"
    step: int
    phase: str


# --- lifecycle ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition(Event):
    kind: ClassVar[str] = "transition"
    src: str
    dst: str
    trigger: str
    reason: str | None = None
    evidence: str | None = None  # what justified a ``recover``


# --- probes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySample(Event):
    """Whole-device memory of one GPU (``gpus`` has one entry) in one probe round."""

    kind: ClassVar[str] = "memory_sample"
    backend: str
    used_bytes: int | None
    free_bytes: int | None
    total_bytes: int | None
    reserved_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRetry(Event):
    kind: ClassVar[str] = "probe_retry"
    backend: str
    attempt: int
    error: str
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeGaveUp(Event):
    kind: ClassVar[str] = "probe_gave_up"
    backend: str
    attempts: int
    error: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessEntry:
    """One GPU process in an attribution report."""

    gpu: str
    pid: int
    used_bytes: int | None
    owner: str  # an engine id, "foreign" or "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributionReport(Event):
    """Who holds the memory on ``gpus`` (tuples are aligned with ``gpus``)."""

    kind: ClassVar[str] = "attribution_report"
    used_bytes: tuple[int | None, ...]
    engine_resident_bytes: tuple[int | None, ...]  # the engine's own tree per GPU (None: unknown)
    unattributed_bytes: tuple[int | None, ...]  # device used minus every listed process
    processes: tuple[ProcessEntry, ...] = ()
    pid_namespace: str = "host"  # "host" | "foreign" (per-process figures unknown)
    context: str = ""  # why the report was made: "after_release", "gate_timeout", ...


# --- gates --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision(Event):
    """One evaluation of a probe gate over one round (``observed_bytes`` aligned with gpus)."""

    kind: ClassVar[str] = "gate_decision"
    gate: str  # "wake" (whole-GPU residual) | "release" (engine resident) | "resume"
    passed: bool  # the condition held on this round
    opened: bool  # the gate opened (held for ``settle_required`` rounds in a row)
    observed_bytes: tuple[int | None, ...]
    limit_bytes: int | None
    settle_count: int
    settle_required: int
    attempt: int
    elapsed_s: float
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GateFailOpen(Event):
    """LOUD: a gate opened without a measurement because the caller chose fail-open."""

    kind: ClassVar[str] = "gate_fail_open"
    gate: str
    error: str
    elapsed_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GateTimedOut(Event):
    kind: ClassVar[str] = "gate_timed_out"
    gate: str
    last_bytes: tuple[int | None, ...]
    limit_bytes: int | None
    elapsed_s: float
    unmeasured: bool = False  # closed because memory could not be measured


# --- engine calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallStarted(Event):
    kind: ClassVar[str] = "adapter_call_started"
    call: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallFinished(Event):
    kind: ClassVar[str] = "adapter_call_finished"
    call: str
    elapsed_s: float
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCallFailed(Event):
    kind: ClassVar[str] = "adapter_call_failed"
    call: str
    elapsed_s: float
    error_type: str
    error: str


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    EngineRegistered,
    RunFinished,
    PhaseChanged,
    Transition,
    MemorySample,
    ProbeRetry,
    ProbeGaveUp,
    AttributionReport,
    GateDecision,
    GateFailOpen,
    GateTimedOut,
    AdapterCallStarted,
    AdapterCallFinished,
    AdapterCallFailed,
)
KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in EVENT_TYPES}
assert len(KINDS) == len(EVENT_TYPES), "duplicate event kind"

__all__ = [
    *(c.__name__ for c in EVENT_TYPES),
    "EVENT_TYPES",
    "KINDS",
    "SCHEMA_VERSION",
    "Event",
    "ProcessEntry",
]
